"""Routing cases as a table: (fleet snapshot, ledger) → the ranked backends and reasons.

The balancer's routing tests check :func:`decide` against each case; the shared-state
tests feed the same cases to the routing through a fleet-wide occupancy view instead of
a ledger, and must get the same answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from ollama_balancer.core.fleet import BackendState, FleetSnapshot
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.occupancy import Occupancy
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical

__all__ = ["CASES", "GB", "NOW", "OTHER", "E", "M", "Pod", "at", "decide", "ledger", "snap"]

GB = 1024**3
NOW = 1000.0
M = canonical("llama3")
E = canonical("embed")
OTHER = canonical("mistral")


@dataclass
class Pod:
    name: str
    installed: list[str] = field(default_factory=list)
    resident: list[str] = field(default_factory=list)
    vram_gb: int = 0
    slots: int = 1
    down: bool = False


def snap(*pods: Pod, sizes: dict[str, int] | None = None) -> FleetSnapshot:
    sizes = sizes or {}
    states = []
    for p in pods:
        inst = {
            canonical(m): InstalledModel(m, sizes.get(m, 4) * GB, "d-" + m) for m in p.installed
        }
        res = {
            canonical(m): ResidentModel(
                m, sizes.get(m, 4) * GB, sizes.get(m, 4) * GB, "d-" + m, "", 4096
            )
            for m in p.resident
        }
        states.append(
            BackendState(
                backend=Backend(
                    p.name, f"http://{p.name}", slots=p.slots, vram_bytes=p.vram_gb * GB
                ),
                installed=inst,
                resident=res,
                last_ok=None if p.down else NOW - 1,
            )
        )
    return FleetSnapshot(tuple(states), NOW - 1)


def ledger(
    inflight: dict[tuple[str, str], int] | None = None,
    loading: dict[tuple[str, str], float] | None = None,
    load_s: float = 20.0,
    service_s: float = 5.0,
    penalised: tuple[str, ...] = (),
) -> Ledger:
    led = Ledger(default_load_seconds=load_s, default_service_seconds=service_s)
    for (b, m), n in (inflight or {}).items():
        for i in range(n):
            led.begin(b, canonical(m), cold=False, now=NOW, request_id=f"{b}{m}{i}")
    for (b, m), started in (loading or {}).items():
        led.begin(b, canonical(m), cold=True, now=started, request_id=f"load-{b}{m}")
    for b in penalised:
        led.penalise(b, NOW + 10)
    return led


def at(
    s: FleetSnapshot, figures: Ledger | Occupancy, now: float = NOW, policy: Policy | None = None
) -> FleetState:
    """What a decision at ``now`` sees: ``s``, and the ledger's figures as a value."""
    policy = policy or Policy()
    occupancy = figures.occupancy() if isinstance(figures, Ledger) else figures
    return FleetState.at(
        s, occupancy, now, fail_threshold=policy.fail_threshold, stale_after=policy.stale_after
    )


def decide(
    s: FleetSnapshot, led: Ledger | Occupancy, model: str = "llama3", **kw: object
) -> list[tuple[str, str]]:
    req = RouteRequest(model=canonical(model), display=model, **kw)  # type: ignore[arg-type]
    d = route(req, at(s, led), Policy(), random.Random(7))
    assert d.unroutable is None, d.unroutable
    return [(c.backend, c.reason) for c in d.ranked]


CASES = [
    pytest.param(
        snap(Pod("a", ["llama3"]), Pod("b", ["llama3"], ["llama3"])),
        ledger(),
        [("b", "resident"), ("a", "cold-load")],
        id="loaded beats installed",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"], ["llama3"])),
        ledger({("a", "llama3"): 1}),
        [("b", "resident"), ("a", "resident")],
        id="a free slot beats a queue",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"], slots=4), Pod("b", ["llama3"], ["llama3"])),
        ledger({("a", "llama3"): 2, ("b", "llama3"): 1}),
        [("a", "resident"), ("b", "resident")],
        id="parallel slots count: 2 of 4 busy is still free",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"])),
        ledger({("a", "llama3"): 2}, load_s=20, service_s=5),
        [("a", "resident"), ("b", "cold-load")],
        id="short queue: waiting is cheaper than loading",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"])),
        ledger({("a", "llama3"): 6}, load_s=20, service_s=5),
        [("b", "cold-load"), ("a", "resident")],
        id="long queue spills to a second pod when waiting costs more than loading",
    ),
    pytest.param(
        snap(
            Pod("a", ["llama3"], ["llama3"], vram_gb=8),
            Pod("b", ["llama3", "mistral"], ["mistral"], vram_gb=6),
        ),
        ledger({("a", "llama3"): 6}, load_s=20, service_s=5),
        [("a", "resident"), ("b", "cold-load")],
        id="spilling that evicts an idle model needs twice the wait",
    ),
    pytest.param(
        snap(
            Pod("a", ["llama3"], ["llama3"], vram_gb=8),
            Pod("b", ["llama3", "mistral"], ["mistral"], vram_gb=6),
        ),
        ledger({("a", "llama3"): 9}, load_s=20, service_s=5),
        [("b", "cold-load"), ("a", "resident")],
        id="past twice the load time it does evict the idle model",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"]), Pod("c", ["llama3"])),
        ledger(
            {("a", "llama3"): 6, ("b", "llama3"): 5},
            loading={("b", "llama3"): NOW - 1},
            load_s=20,
            service_s=5,
        ),
        [("a", "resident"), ("b", "loading"), ("c", "cold-load")],
        id="a load under way raises the bar for another copy: no cascade",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"]), Pod("b", ["llama3"])),
        ledger(loading={("a", "llama3"): NOW - 5}),
        [("a", "loading"), ("b", "cold-load")],
        id="a loading pod absorbs followers",
    ),
    pytest.param(
        snap(
            Pod("a", ["llama3", "mistral"], ["mistral"], vram_gb=6),
            Pod("b", ["llama3", "mistral"], ["mistral"], vram_gb=6),
        ),
        ledger({("a", "mistral"): 1}),
        [("b", "cold-load"), ("a", "cold-load")],
        id="no busy model is evicted: load where the victim is idle",
    ),
    pytest.param(
        snap(
            Pod("a", ["llama3"], [], vram_gb=8),
            Pod("b", ["llama3", "mistral"], ["mistral"], vram_gb=8),
        ),
        ledger(),
        [("a", "cold-load"), ("b", "cold-load")],
        id="cold load prefers free VRAM over evicting",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"], ["llama3"])),
        ledger(penalised=("a",)),
        [("b", "resident"), ("a", "resident")],
        id="a penalised pod goes last",
    ),
    pytest.param(
        snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"], ["llama3"], down=True)),
        ledger(),
        [("a", "resident")],
        id="a down pod is not routable",
    ),
    pytest.param(
        snap(Pod("a", ["library/llama3:latest"], ["Llama3:LATEST"])),
        ledger(),
        [("a", "resident")],
        id="names are normalised",
    ),
]
