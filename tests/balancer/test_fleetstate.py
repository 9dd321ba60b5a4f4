"""The fleet state as tables: which pods are routable, decided once; the occupancy value and
the copies a decision derives from it (pure)."""

from __future__ import annotations

import pytest

from ollama_balancer.core.fleet import BackendState, FleetSnapshot, Health
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.occupancy import LoadRecord, Occupancy
from tests.harness.routing_cases import NOW, Pod, snap


@pytest.mark.parametrize(
    ("last_ok", "failures", "health"),
    [
        pytest.param(NOW - 1, 0, Health.UP, id="answered recently: up"),
        pytest.param(NOW - 15, 0, Health.UP, id="exactly stale_after ago: still up"),
        pytest.param(NOW - 15.5, 0, Health.STALE, id="older than stale_after: stale"),
        pytest.param(None, 0, Health.PENDING, id="never answered: pending"),
        pytest.param(NOW - 1, 2, Health.UP, id="below fail_threshold: up"),
        pytest.param(NOW - 1, 3, Health.DOWN, id="fail_threshold failures: down"),
        pytest.param(None, 3, Health.DOWN, id="never answered, then failed: down"),
    ],
)
def test_health_decides_routability(last_ok: float | None, failures: int, health: Health) -> None:
    (base,) = snap(Pod("a", ["llama3"])).backends
    state = BackendState(base.backend, last_ok=last_ok, failures=failures)
    fleet = FleetState.at(
        FleetSnapshot((state,)), Occupancy(), NOW, fail_threshold=3, stale_after=15.0
    )
    assert fleet.health == {"a": health}
    assert fleet.is_routable("a") is (health is Health.UP)
    assert fleet.routable == ((state,) if health is Health.UP else ())


def test_routable_pods_keep_discovery_order_and_penalised_pods_stay_routable() -> None:
    fleet_snap = snap(Pod("c", ["llama3"]), Pod("a", ["llama3"], down=True), Pod("b", ["llama3"]))
    occupancy = Occupancy(penalties={"b": NOW + 10, "c": NOW - 1})
    fleet = FleetState.at(fleet_snap, occupancy, NOW, fail_threshold=3, stale_after=15.0)
    assert [s.name for s in fleet.routable] == ["c", "b"]
    assert fleet.penalised == {"b"}  # c's cool-down is over
    assert [s.name for s in fleet.backends] == ["c", "a", "b"]
    assert fleet.get("a") is fleet_snap.backends[1] and fleet.get("zz") is None
    assert not fleet.is_routable("zz")
    scratch = fleet.with_occupancy(occupancy.with_bound({("c", "m"): 1}))
    assert scratch.routable is fleet.routable and scratch.now == NOW
    assert scratch.occupancy.inflight("c", "m") == 1 and fleet.occupancy.inflight("c", "m") == 0
    assert scratch.penalised == {"b"}
    assert fleet.with_occupancy(Occupancy()).penalised == frozenset()


def test_occupancy_reads() -> None:
    occ = Occupancy(
        held={("a", "m"): 2, ("a", "n"): 1, ("b", "m"): 1},
        loads={("a", "n"): LoadRecord(NOW - 3, "r1")},
        loaded={("b", "m"): NOW - 1},
        penalties={"b": NOW + 5},
        load_times={"m": 12.0},
        service_times={"n": 3.0},
        default_load_seconds=20.0,
        default_service_seconds=5.0,
    )
    assert (occ.inflight("a", "m"), occ.inflight("b", "n")) == (2, 0)
    assert (occ.backend_inflight("a"), occ.backend_inflight("c"), occ.total_inflight()) == (3, 0, 4)
    assert occ.loading("a", "n") == LoadRecord(NOW - 3, "r1") and occ.loading("a", "m") is None
    assert occ.loading_on("a") == ("n",) and occ.loading_on("b") == ()
    assert occ.loaded_at("b", "m") == NOW - 1 and occ.loaded_at("a", "m") is None
    assert occ.loaded_on("b") == (("m", NOW - 1),) and occ.loaded_on("a") == ()
    assert occ.penalised("b", NOW) and not occ.penalised("b", NOW + 5)
    assert not occ.penalised("a", NOW)
    assert (occ.load_seconds("m"), occ.load_seconds("n")) == (12.0, 20.0)
    assert (occ.service_seconds("m"), occ.service_seconds("n")) == (5.0, 3.0)


@pytest.mark.parametrize(
    ("bound", "loads", "held", "loading"),
    [
        pytest.param(
            {("a", "m"): 1},
            {},
            {("a", "m"): 2, ("b", "m"): 1},
            {("b", "m"): LoadRecord(1.0, "old")},
            id="one more in flight",
        ),
        pytest.param(
            {("c", "m"): 2},
            {("c", "m"): LoadRecord(9.0, "new")},
            {("a", "m"): 1, ("b", "m"): 1, ("c", "m"): 2},
            {("b", "m"): LoadRecord(1.0, "old"), ("c", "m"): LoadRecord(9.0, "new")},
            id="a cold request records its load",
        ),
        pytest.param(
            {("b", "m"): 1},
            {("b", "m"): LoadRecord(9.0, "new")},
            {("a", "m"): 1, ("b", "m"): 2},
            {("b", "m"): LoadRecord(1.0, "old")},
            id="a load under way stays the load: the newcomer joins it",
        ),
    ],
)
def test_with_bound_derives_a_new_value(
    bound: dict[tuple[str, str], int],
    loads: dict[tuple[str, str], LoadRecord],
    held: dict[tuple[str, str], int],
    loading: dict[tuple[str, str], LoadRecord],
) -> None:
    before = Occupancy(
        held={("a", "m"): 1, ("b", "m"): 1}, loads={("b", "m"): LoadRecord(1.0, "old")}
    )
    after = before.with_bound(bound, loads)
    assert (dict(after.held), dict(after.loads)) == (held, loading)
    assert after.total_inflight() == sum(held.values())
    assert after.backend_inflight("c") == held.get(("c", "m"), 0)
    assert dict(before.held) == {("a", "m"): 1, ("b", "m"): 1}  # the original is untouched
    assert before.with_bound({}) is before
