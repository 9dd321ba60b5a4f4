"""Routing decisions as tables: (fleet, ledger) -> ranked backends and reasons."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from ollama_balancer.core.errors import (
    HoldersDown,
    NoBackend,
    NoSuchModel,
    PinDown,
    PinUnknown,
    Unroutable,
)
from ollama_balancer.core.fleet import BackendState, FleetSnapshot
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.occupancy import Occupancy
from ollama_balancer.core.rankers import Strategy
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical

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


@pytest.mark.parametrize(("fleet", "led", "expected"), CASES)
def test_route(fleet: FleetSnapshot, led: Ledger, expected: list[tuple[str, str]]) -> None:
    assert decide(fleet, led) == expected


@pytest.mark.parametrize(
    ("inflight", "expected"),
    [
        pytest.param({}, ("a", "affinity"), id="idle fleet keeps affinity"),
        pytest.param({("a", "llama3"): 1}, ("a", "affinity"), id="within the bound"),
        pytest.param(
            {("a", "llama3"): 3, ("b", "llama3"): 0, ("c", "llama3"): 0},
            ("b", "resident"),
            id="above 1.25x the mean breaks affinity",
        ),
    ],
)
def test_affinity(inflight: dict[tuple[str, str], int], expected: tuple[str, str]) -> None:
    fleet = snap(*(Pod(n, ["llama3"], ["llama3"], slots=4) for n in "abc"))
    got = decide(fleet, ledger(inflight), affinity_backend="a")
    assert got[0][1] == expected[1]
    if expected[1] == "affinity":
        assert got[0][0] == expected[0]
    else:
        assert got[0][0] != "a"


def test_pinned() -> None:
    fleet = snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["mistral"]))
    assert decide(fleet, ledger(), pin="b") == [("b", "pinned")]


@pytest.mark.parametrize(
    ("fleet", "model", "outcome"),
    [
        pytest.param(snap(Pod("a", ["llama3"])), "nope", NoSuchModel("nope"), id="model on no pod"),
        pytest.param(
            snap(Pod("a", ["llama3"], down=True), Pod("b", ["mistral"])),
            "llama3",
            HoldersDown("llama3", ("a",)),
            id="every pod holding it is down",
        ),
        pytest.param(snap(), "llama3", NoBackend(), id="empty fleet"),
    ],
)
def test_unroutable_outcomes(fleet: FleetSnapshot, model: str, outcome: Unroutable) -> None:
    d = route(
        RouteRequest(canonical(model), model), at(fleet, ledger()), Policy(), random.Random(1)
    )
    assert d.unroutable == outcome
    assert not d.ranked


@pytest.mark.parametrize(
    ("pin", "outcome"),
    [
        pytest.param("zz", PinUnknown("zz", ("a", "b")), id="pinned pod unknown"),
        pytest.param("b", PinDown("b"), id="pinned pod down"),
    ],
)
def test_pin_outcomes(pin: str, outcome: Unroutable) -> None:
    d = route(
        RouteRequest(M, "llama3", pin=pin),
        at(snap(Pod("a", ["llama3"]), Pod("b", ["llama3"], down=True)), ledger()),
        Policy(),
        random.Random(1),
    )
    assert d.unroutable == outcome


def test_auto_pull_targets_most_free_room() -> None:
    fleet = snap(
        Pod("a", ["mistral"], ["mistral"], vram_gb=8),
        Pod("b", [], [], vram_gb=8),
    )
    d = route(
        RouteRequest(M, "llama3"), at(fleet, ledger()), Policy(auto_pull=True), random.Random(1)
    )
    assert [(c.backend, c.reason) for c in d.ranked] == [("b", "pull")]


def test_ties_spread_evenly() -> None:
    fleet = snap(*(Pod(n, ["llama3"], ["llama3"], slots=8) for n in "abcd"))
    rng = random.Random(42)
    led = ledger()
    counts: Counter[str] = Counter()
    for _ in range(4000):
        d = route(RouteRequest(M, "llama3"), at(fleet, led), Policy(), rng)
        counts[d.ranked[0].backend] += 1
    assert set(counts) == set("abcd")
    assert max(counts.values()) / min(counts.values()) < 1.15, counts


def test_least_connections_baseline_ignores_residency() -> None:
    fleet = snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["llama3"]))
    d = route(
        RouteRequest(M, "llama3"),
        at(fleet, ledger({("a", "mistral"): 1})),
        Policy(strategy=Strategy.LEAST_CONNECTIONS),
        random.Random(1),
    )
    assert d.ranked[0].backend == "b"


def test_a_load_finished_after_the_last_poll_takes_vram() -> None:
    """Just after a load, /api/ps has not shown it yet: the pod is not roomy for another."""
    fleet = snap(
        Pod("a", ["llama3", "mistral"], [], vram_gb=16),
        Pod("b", ["mistral"], [], vram_gb=14),
    )
    led = ledger()
    led.begin("a", M, cold=True, now=NOW - 5, request_id="r1")
    led.first_byte("a", M, now=NOW - 0.5, request_id="r1")  # done after a's last poll (NOW - 1)
    led.end("a", M, request_id="r1")
    mistral = canonical("mistral")
    d = route(RouteRequest(mistral, "mistral"), at(fleet, led), Policy(), random.Random(1))
    # 4 of a's 16 GiB hold llama3 now (12 free): mistral goes to b (14 free)
    assert d.ranked[0].backend == "b"
