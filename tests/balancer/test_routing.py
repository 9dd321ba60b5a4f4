"""Routing decisions as tables: (fleet, ledger) -> ranked backends and reasons."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ollama_balancer.core.errors import (
    HoldersDown,
    NoBackend,
    NoSuchModel,
    PinDown,
    PinUnknown,
    Unroutable,
)
from ollama_balancer.core.fleet import FleetSnapshot
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.rankers import Strategy
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_wire.names import canonical
from tests.harness.routing_cases import CASES, NOW, M, Pod, at, decide, ledger, snap


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


def test_a_named_pod() -> None:
    fleet = snap(Pod("a", ["llama3"], ["llama3"]), Pod("b", ["mistral"]))
    assert decide(fleet, ledger(), pin="b") == [("b", "named")]


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


@pytest.mark.parametrize(
    ("inflight", "slots", "expected"),
    [
        pytest.param(1, 2, 15.0, id="a free slot: the load's remaining time"),
        pytest.param(2, 2, 20.0, id="every slot taken: one service round after the load"),
        pytest.param(3, 2, 20.0, id="one queued, a slot frees in the same round"),
        pytest.param(4, 2, 25.0, id="two rounds"),
        pytest.param(1, 1, 20.0, id="one slot, the loader's own request ahead"),
    ],
)
def test_a_loading_pods_expected_wait_counts_the_rounds_as_a_resident_one(
    inflight: int, slots: int, expected: float
) -> None:
    """Remaining load (20 s load started 5 s ago) + the rounds a resident pod would need."""
    fleet = snap(Pod("a", ["llama3"], slots=slots))
    led = ledger({("a", "llama3"): inflight - 1}, loading={("a", "llama3"): NOW - 5}, service_s=5)
    d = route(RouteRequest(M, "llama3"), at(fleet, led), Policy(), random.Random(1))
    assert [(c.backend, c.reason, c.wait) for c in d.ranked] == [("a", "loading", expected)]
