"""The pure decisions of issue #24, as tables: what a replica believes of the fleet while the
store is away (``degraded_view``), what it writes back into a store that came back empty
(``plan_reassert``), and when it knows the store lost its contents (``store_lost``)."""

from __future__ import annotations

import pytest

from ollama_balancer.core.occupancy import LoadRecord, Occupancy
from ollama_balancer.core.shared.degrade import LastSeen, degraded_view
from ollama_balancer.core.shared.model import Lease
from ollama_balancer.core.shared.resync import (
    LearnedClaim,
    LoadClaim,
    LoadedClaim,
    plan_reassert,
    store_lost,
)

ME, OTHER = "me:1:aa", "other:2:bb"
A, B = ("gpu-a", "m"), ("gpu-b", "m")
TTL = 30.0


def occ(**kw: object) -> Occupancy:
    return Occupancy(**kw)  # type: ignore[arg-type]


# The store, at the moment it was lost (t=100): 3 requests on A (1 of them mine), a load of
# "m" on B started by the other replica at t=98, one I started on A at t=99 (mine), a load
# finished on gpu-c at t=90, a penalty until t=130, learned times for m.
FLEET = occ(
    held={A: 3, B: 1},
    loads={B: LoadRecord(98.0, f"{OTHER}/r1/1"), A: LoadRecord(99.0, f"{ME}/r2/2")},
    loaded={("gpu-c", "m"): 90.0},
    penalties={"gpu-d": 130.0},
    load_times={"m": 4.0},
    service_times={"m": 2.0},
)
OWN_THEN = occ(held={A: 1}, loads={A: LoadRecord(99.0, f"{ME}/r2/2")}, load_times={"m": 9.0})
LAST = LastSeen(fleet=FLEET, own=OWN_THEN, at=100.0, replica=ME)


@pytest.mark.parametrize(
    ("local", "now", "expected"),
    [
        pytest.param(
            OWN_THEN,
            101.0,
            {
                "held": {A: 3, B: 1},
                "loads": {A: f"{ME}/r2/2", B: f"{OTHER}/r1/1"},
                "loaded": [("gpu-c", "m")],
                "penalties": ["gpu-d"],
                "load_times": {"m": 4.0},
            },
            id="a moment after: the fleet as it was, mine counted once",
        ),
        pytest.param(
            occ(held={A: 2}),
            101.0,
            {
                "held": {A: 4, B: 1},
                "loads": {B: f"{OTHER}/r1/1"},
                "loaded": [("gpu-c", "m")],
                "penalties": ["gpu-d"],
                "load_times": {"m": 4.0},
            },
            id="my own counts move on (my load ended, one more request)",
        ),
        pytest.param(
            OWN_THEN,
            107.0,
            {
                "held": {A: 3, B: 1},
                "loads": {A: f"{ME}/r2/2"},
                "loaded": [("gpu-c", "m")],
                "penalties": ["gpu-d"],
                "load_times": {"m": 4.0},
            },
            id="another's load is believed for twice its load time (8 s), at least 5 s",
        ),
        pytest.param(
            occ(),
            100.0 + TTL,
            {
                "held": {},
                "loads": {},
                "loaded": [("gpu-c", "m")],
                "penalties": [],
                "load_times": {"m": 4.0},
            },
            id="after a lease TTL the others' requests are forgotten, as the store would",
        ),
        pytest.param(
            occ(loaded={("gpu-e", "m"): 120.0}, service_times={"x": 1.0}),
            211.0,
            {
                "held": {},
                "loads": {},
                "loaded": [("gpu-e", "m")],
                "penalties": [],
                "load_times": {"m": 4.0},
            },
            id="finished loads until the polls must show them (120 s)",
        ),
    ],
)
def test_degraded_view(local: Occupancy, now: float, expected: dict[str, object]) -> None:
    got = degraded_view(local, LAST, now, lease_ttl=TTL)
    assert dict(got.held) == expected["held"]
    assert {k: r.request_id for k, r in got.loads.items()} == expected["loads"]
    assert sorted(got.loaded) == expected["loaded"]
    assert sorted(p for p in got.penalties if got.penalised(p, now)) == expected["penalties"]
    assert dict(got.load_times) == expected["load_times"]
    assert not got.fleet_wide


def test_degraded_view_without_memory_is_the_local_view() -> None:
    local = occ(held={A: 1})
    assert degraded_view(local, None, 1.0, lease_ttl=TTL) is local


def test_own_learned_times_fill_in_what_the_fleet_had_not_learned() -> None:
    got = degraded_view(occ(load_times={"m": 9.0, "n": 3.0}), LAST, 101.0, lease_ttl=TTL)
    assert dict(got.load_times) == {"m": 4.0, "n": 3.0}


def lease(member: str, key: tuple[str, str], loads: bool = False) -> Lease:
    return Lease(key[0], key[1], member, 4, member.split("/")[1], loads=loads)


MINE_LOADING = lease(f"{ME}/r2/2", A, loads=True)
MINE_FOLLOWING = lease(f"{ME}/r3/3", B)
MINE_ANSWERED = lease(f"{ME}/r4/4", B)


@pytest.mark.parametrize(
    ("held", "answered", "last", "now", "loads", "owners"),
    [
        pytest.param(
            {x.member: x for x in (MINE_LOADING, MINE_FOLLOWING)},
            [],
            LAST,
            101.0,
            [
                LoadClaim("gpu-a|m", f"{ME}/r2/2", 2000),
                LoadClaim("gpu-b|m", f"{ME}/r3/3", 3000),
            ],
            {f"{ME}/r3/3"},
            id="my load, and the other's load my request follows (under my lease)",
        ),
        pytest.param(
            {x.member: x for x in (MINE_LOADING, MINE_ANSWERED)},
            [MINE_ANSWERED.member],
            LAST,
            101.0,
            [
                LoadClaim("gpu-a|m", f"{ME}/r2/2", 2000),
                LoadClaim("gpu-b|m", f"{OTHER}/r1/1", 3000),
            ],
            set(),
            id="a follower already answered vouches for nothing: the other's, as remembered",
        ),
        pytest.param(
            {MINE_LOADING.member: MINE_LOADING},
            [],
            LAST,
            120.0,
            [LoadClaim("gpu-a|m", f"{ME}/r2/2", 21000)],
            set(),
            id="another's load too old to be under way is not written back",
        ),
        pytest.param(
            {MINE_LOADING.member: MINE_LOADING},
            [],
            None,
            101.0,
            [LoadClaim("gpu-a|m", f"{ME}/r2/2", 2000)],
            set(),
            id="nothing remembered (never saw the store): my own only",
        ),
    ],
)
def test_plan_reassert_loads(
    held: dict[str, Lease],
    answered: list[str],
    last: LastSeen | None,
    now: float,
    loads: list[LoadClaim],
    owners: set[str],
) -> None:
    own = occ(held={A: 1}, loads={A: LoadRecord(99.0, f"{ME}/r2/2")}, load_times={"n": 7.0})
    plan = plan_reassert(held, answered, own, last, now, loaded_memory=120.0)
    assert list(plan.loads) == loads
    assert plan.owners == owners


def test_plan_reassert_finished_loads_and_learned_times() -> None:
    own = occ(loaded={("gpu-x", "n"): 95.0}, load_times={"n": 7.0, "m": 9.0})
    plan = plan_reassert({}, [], own, LAST, 101.0, loaded_memory=10.0)
    # gpu-c finished at 90: 11 s ago, beyond the 10 s memory; mine at 95: 6 s ago.
    assert list(plan.loaded) == [LoadedClaim("gpu-x|n", 6000)]
    # The fleet's learned times win over mine; mine fill in the rest.
    assert list(plan.learned) == [LearnedClaim("m", 4.0, 2.0), LearnedClaim("n", 7.0, None)]


@pytest.mark.parametrize(
    ("remembered", "current", "lost"),
    [
        pytest.param(None, "e1", False, id="first sight"),
        pytest.param(None, None, False, id="first sight of an empty store"),
        pytest.param("e1", "e1", False, id="the same store"),
        pytest.param("e1", None, True, id="emptied (restart without persistence, flush)"),
        pytest.param("e1", "e2", True, id="emptied, another replica wrote back first"),
    ],
)
def test_store_lost(remembered: str | None, current: str | None, lost: bool) -> None:
    assert store_lost(remembered, current) is lost
