"""Routing never raises, and ranks only routable, distinct backends, whatever the fleet."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_balancer.core.errors import for_outcome
from ollama_balancer.core.fleet import BackendState, FleetSnapshot, Health
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.rankers import Strategy
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical

MODELS = [canonical(m) for m in ("llama3", "qwen2.5:7b", "mistral", "embed")]
NOW = 100.0

pod = st.fixed_dictionaries(
    {
        "installed": st.sets(st.sampled_from(MODELS)),
        "resident": st.sets(st.sampled_from(MODELS)),
        "slots": st.integers(1, 4),
        "vram": st.sampled_from([0, 4, 8, 24]),
        "age": st.sampled_from([None, 1.0, 30.0]),
        "failures": st.integers(0, 4),
        "inflight": st.dictionaries(st.sampled_from(MODELS), st.integers(0, 9)),
        "loading": st.sets(st.sampled_from(MODELS)),
        "penalised": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    pods=st.lists(pod, max_size=6),
    model=st.sampled_from(MODELS),
    pin=st.one_of(st.none(), st.sampled_from(["p0", "p1", "zz"])),
    affinity=st.one_of(st.none(), st.sampled_from(["p0", "p2"])),
    auto_pull=st.booleans(),
    strategy=st.sampled_from(list(Strategy)),
    seed=st.integers(0, 2**16),
)
def test_route_is_total_and_sane(
    pods: list[dict[str, Any]],
    model: str,
    pin: str | None,
    affinity: str | None,
    auto_pull: bool,
    strategy: Strategy,
    seed: int,
) -> None:
    led = Ledger()
    states = []
    for i, p in enumerate(pods):
        name = f"p{i}"
        gb = 1024**3
        states.append(
            BackendState(
                backend=Backend(
                    name, f"http://{name}", slots=p["slots"], vram_bytes=p["vram"] * gb
                ),
                installed={m: InstalledModel(m, 4 * gb, "d" + m) for m in p["installed"]},
                resident={m: ResidentModel(m, 4 * gb, 4 * gb, "d" + m) for m in p["resident"]},
                last_ok=None if p["age"] is None else NOW - p["age"],
                failures=p["failures"],
            )
        )
        for m, n in p["inflight"].items():
            for k in range(n):
                led.begin(name, m, cold=False, now=NOW, request_id=f"{name}{m}{k}")
        for m in p["loading"]:
            led.begin(name, m, cold=True, now=NOW - 1, request_id=f"load{name}{m}")
        if p["penalised"]:
            led.penalise(name, NOW + 5)
    snap = FleetSnapshot(tuple(states), NOW)
    policy = Policy(auto_pull=auto_pull, strategy=strategy)
    fleet = FleetState.at(
        snap,
        led.occupancy(),
        NOW,
        fail_threshold=policy.fail_threshold,
        stale_after=policy.stale_after,
    )
    d = route(RouteRequest(model, model, pin, affinity), fleet, policy, random.Random(seed))
    if d.unroutable is not None:
        assert for_outcome(d.unroutable).status in (404, 503)
        assert not d.ranked
        return
    names = [c.backend for c in d.ranked]
    assert names and len(names) == len(set(names))
    routable = {
        s.name
        for s in states
        if s.health(NOW, policy.fail_threshold, policy.stale_after) is Health.UP
    }
    assert set(names) <= routable
    if pin is not None:
        assert names == [pin]
