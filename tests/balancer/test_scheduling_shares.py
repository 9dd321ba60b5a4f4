"""Class shares as tables: nominal seats, lending, the non-lendable part, borrow limits."""

from __future__ import annotations

import math

import pytest

from ollama_balancer.core.scheduling import (
    ClassPolicy,
    ClassShare,
    SchedulerPolicy,
    plan,
    seats,
)
from ollama_balancer.core.scheduling.view import Candidate, Holder
from tests.harness.scheduling_cases import B, C, S, cand, holder, many, view, waiting

DEFAULTS = SchedulerPolicy()


def shares(c: float, s: float, b: float, **kw: float) -> SchedulerPolicy:
    return SchedulerPolicy(
        critical=ClassPolicy(nominal=c, **kw),
        standard=ClassPolicy(nominal=s, **kw),
        batch=ClassPolicy(nominal=b, **kw),
    )


@pytest.mark.parametrize(
    ("slots", "policy", "expected"),
    [
        pytest.param(10, DEFAULTS, (2, 6, 2), id="defaults on 10 slots: 0.2 / 0.6 / 0.2 exactly"),
        pytest.param(
            8, DEFAULTS, (2, 5, 1), id="defaults on 8: remainders .8 then .6 ties to critical"
        ),
        pytest.param(4, DEFAULTS, (1, 2, 1), id="defaults on 4: the two largest remainders"),
        pytest.param(
            2, DEFAULTS, (1, 1, 0), id="defaults on 2: the remainder tie goes to critical"
        ),
        pytest.param(1, DEFAULTS, (0, 1, 0), id="one slot: the largest share owns it"),
        pytest.param(0, DEFAULTS, (0, 0, 0), id="no slot: no seat"),
        pytest.param(5, shares(0.5, 0.5, 0.0), (3, 2, 0), id="a zero share owns nothing"),
        pytest.param(6, shares(0.5, 0.5, 0.5), (2, 2, 2), id="shares are scaled to sum to one"),
        pytest.param(3, shares(0.0, 0.0, 1.0), (0, 0, 3), id="one class may own the pool"),
    ],
)
def test_nominal_seats(slots: int, policy: SchedulerPolicy, expected: tuple[int, int, int]) -> None:
    got = seats(slots, policy)
    assert (got[C], got[S], got[B]) == expected
    assert sum(got.values()) == slots


def granted(
    slots: int,
    holders: list[Holder],
    queue: list[Candidate],
    free: int,
    policy: SchedulerPolicy = DEFAULTS,
) -> list[str]:
    return [c.id for c in plan(view(slots, holders, queue), policy, free).grants]


# Ten slots: critical 2, standard 6, batch 2 seats unless said otherwise.
@pytest.mark.parametrize(
    ("holders", "queue", "free", "policy", "expected"),
    [
        pytest.param(
            [],
            waiting("b", 5, B),
            10,
            DEFAULTS,
            ["b0", "b1", "b2", "b3", "b4"],
            id="an idle pool lends everything: batch alone takes what it asks",
        ),
        pytest.param(
            [],
            waiting("b", 10, B),
            10,
            SchedulerPolicy(critical=ClassPolicy(nominal=0.2, lendable=0.0)),
            [f"b{i}" for i in range(8)],
            id="critical lends nothing: its two seats stay free for it",
        ),
        pytest.param(
            [],
            waiting("b", 10, B),
            10,
            SchedulerPolicy(standard=ClassPolicy(nominal=0.6, lendable=0.5)),
            [f"b{i}" for i in range(7)],
            id="standard lends half: three of its six seats stay free for it",
        ),
        pytest.param(
            [],
            waiting("b", 10, B),
            10,
            SchedulerPolicy(batch=ClassPolicy(nominal=0.2, borrow_limit=0.3)),
            [f"b{i}" for i in range(5)],
            id="batch may borrow 0.3 of the pool: two own seats plus three",
        ),
        pytest.param(
            [],
            [*waiting("s", 6, S), *waiting("b", 10, B)],
            10,
            DEFAULTS,
            [*(f"s{i}" for i in range(6)), "b0", "b1", "b2", "b3"],
            id="a class that waits for its seats lends none of them",
        ),
        pytest.param(
            [],
            [*waiting("s", 3, S), *waiting("b", 10, B)],
            10,
            DEFAULTS,
            ["s0", "s1", "s2", *(f"b{i}" for i in range(7))],
            id="a class lends only the seats its demand leaves idle",
        ),
        pytest.param(
            [*many("s", 7, S), holder("b", B)],
            waiting("w", 3, B),
            2,
            DEFAULTS,
            ["w0", "w1"],
            id="standard already borrows one of critical's two: batch gets its own and the other",
        ),
        pytest.param(
            [*many("c", 2, C), *many("s", 5, S), holder("b", B)],
            [cand("c9", C, arrival=0), cand("b9", B, arrival=9)],
            1,
            DEFAULTS,
            ["b9"],
            id="a class below its nominal goes before a higher class that would borrow",
        ),
        pytest.param(
            [],
            waiting("s", 5, S),
            3,
            DEFAULTS,
            ["s0", "s1", "s2"],
            id="never more grants than free slots",
        ),
        pytest.param(
            many("b", 2, B),
            [cand("long", B, expected=60, resumable=False, arrival=0), cand("short", B, arrival=1)],
            8,
            DEFAULTS,
            ["short"],
            id="long work that cannot resume does not borrow; the walk goes on past it",
        ),
        pytest.param(
            [holder("b", B)],
            [cand("long", B, expected=60, resumable=False)],
            9,
            DEFAULTS,
            ["long"],
            id="long work that cannot resume takes its own class's seat",
        ),
        pytest.param(
            many("b", 2, B),
            [cand("cont", B, expected=60, preemptions=2)],
            8,
            DEFAULTS,
            [],
            id="long work preempted twice cannot be taken back again: it does not borrow",
        ),
        pytest.param(
            many("b", 2, B),
            [cand("quick", B, expected=1.0, resumable=False)],
            8,
            DEFAULTS,
            ["quick"],
            id="short work that cannot resume borrows: it ends before a reclaim would",
        ),
    ],
)
def test_lending_and_borrowing(
    holders: list[Holder],
    queue: list[Candidate],
    free: int,
    policy: SchedulerPolicy,
    expected: list[str],
) -> None:
    assert granted(10, holders, queue, free, policy) == expected


def test_a_class_without_seats_borrows_even_long_unresumable_work() -> None:
    """One slot: critical and batch own nothing, so borrowing is their only way to run."""
    queue = [cand("long", B, expected=600, resumable=False)]
    assert granted(1, [], queue, 1) == ["long"]


@pytest.mark.parametrize(
    ("slots", "holders", "queue", "expected"),
    [
        pytest.param(
            8,
            many("h", 8, S),
            [cand("c", C)],
            {
                C: ClassShare(C, 2, 2, 8, held=0, waiting=1, lent=2, borrowed=0, limit=2),
                S: ClassShare(S, 5, 5, 8, held=8, waiting=0, lent=0, borrowed=3, limit=8),
                B: ClassShare(B, 1, 1, 8, held=0, waiting=0, lent=1, borrowed=0, limit=1),
            },
            id="standard borrows critical's two seats and batch's one",
        ),
        pytest.param(
            10,
            [],
            [],
            {
                C: ClassShare(C, 2, 2, 10, held=0, waiting=0, lent=0, borrowed=0, limit=10),
                S: ClassShare(S, 6, 6, 10, held=0, waiting=0, lent=0, borrowed=0, limit=10),
                B: ClassShare(B, 2, 2, 10, held=0, waiting=0, lent=0, borrowed=0, limit=10),
            },
            id="an idle pool: every class could take all of it",
        ),
        pytest.param(
            10,
            [*many("s", 3, S)],
            waiting("b", 4, B),
            {
                C: ClassShare(C, 2, 2, 10, held=0, waiting=0, lent=0, borrowed=0, limit=5),
                S: ClassShare(S, 6, 6, 10, held=3, waiting=0, lent=0, borrowed=0, limit=8),
                B: ClassShare(B, 2, 2, 10, held=0, waiting=4, lent=0, borrowed=0, limit=7),
            },
            id="limits: own seats plus the idle lendable seats of the others",
        ),
    ],
)
def test_class_shares(
    slots: int, holders: list[Holder], queue: list[Candidate], expected: dict[object, ClassShare]
) -> None:
    got = {s.cls: s for s in plan(view(slots, holders, queue), DEFAULTS, 0).shares}
    assert got == expected


def test_defaults() -> None:
    """The documented defaults (docs/scheduling.md §4 and the policy module's docstring)."""
    p = SchedulerPolicy()
    assert (p.critical.nominal, p.standard.nominal, p.batch.nominal) == (0.2, 0.6, 0.2)
    assert {p.of(c).lendable for c in (C, S, B)} == {1.0}
    assert {p.of(c).borrow_limit for c in (C, S, B)} == {1.0}
    assert (p.critical.wait_budget, p.standard.wait_budget, p.batch.wait_budget) == (0.5, 1, 10)
    assert (p.critical.max_wait, p.standard.max_wait, p.batch.max_wait) == (120, 120, 300)
    assert (p.max_preemptions, p.aging, p.unresumable_borrow, p.cancel_latency) == (2, 1, 1, 0.2)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ClassPolicy(nominal=1.5), id="nominal above 1"),
        pytest.param(lambda: ClassPolicy(nominal=-0.1), id="nominal below 0"),
        pytest.param(lambda: ClassPolicy(nominal=0.2, lendable=2), id="lendable above 1"),
        pytest.param(lambda: ClassPolicy(nominal=0.2, borrow_limit=-1), id="negative borrow limit"),
        pytest.param(lambda: ClassPolicy(nominal=0.2, max_wait=0), id="max wait zero"),
        pytest.param(lambda: ClassPolicy(nominal=0.2, wait_budget=math.inf), id="endless budget"),
        pytest.param(lambda: shares(0, 0, 0), id="no class owns anything"),
        pytest.param(lambda: SchedulerPolicy(max_preemptions=-1), id="negative preemptions"),
        pytest.param(lambda: SchedulerPolicy(aging=math.nan), id="aging not a number"),
        pytest.param(lambda: SchedulerPolicy(cancel_latency=-1), id="negative cancel latency"),
        pytest.param(lambda: holder("h", weight=0), id="a holder of weight 0"),
        pytest.param(lambda: cand("c", expected=-1), id="negative expected work"),
        pytest.param(lambda: view(-1), id="negative slots"),
    ],
)
def test_invalid_settings_are_refused(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError):
        make()
