"""Dispatch order as tables: shortest work first with aging, deadlines, own seats first."""

from __future__ import annotations

import math

import pytest

from ollama_balancer.core.priority import Priority
from ollama_balancer.core.scheduling import SchedulerPolicy, plan
from ollama_balancer.core.scheduling.order import competing, due, may_borrow
from ollama_balancer.core.scheduling.view import Candidate, Holder
from tests.harness.scheduling_cases import NOW, B, C, S, cand, holder, many, view, waiting


def order(
    queue: list[Candidate],
    slots: int = 100,
    holders: list[Holder] | None = None,
    policy: SchedulerPolicy | None = None,
) -> list[str]:
    p = plan(view(slots, holders or [], queue), policy or SchedulerPolicy(), 0)
    return [c.id for c in p.order]


@pytest.mark.parametrize(
    ("queue", "aging", "expected"),
    [
        pytest.param(
            [cand("long", expected=60, arrival=0), cand("short", expected=1, arrival=10)],
            1.0,
            ["short", "long"],
            id="a short request passes a long one that came earlier",
        ),
        pytest.param(
            [cand("long", expected=60, arrival=0), cand("short", expected=1, arrival=70)],
            1.0,
            ["long", "short"],
            id="aging: a long request is not passed by one arriving a long time later",
        ),
        pytest.param(
            [cand("long", expected=60, arrival=0), cand("short", expected=1, arrival=10)],
            0.0,
            ["long", "short"],
            id="aging 0: arrival order",
        ),
        pytest.param(
            [cand("long", expected=60, arrival=0), cand("short", expected=1, arrival=100)],
            2.0,
            ["short", "long"],
            id="aging 2: size counts double",
        ),
        pytest.param(
            [cand("d", expected=5, arrival=10, deadline=20), cand("short", expected=1, arrival=10)],
            1.0,
            ["short", "d"],
            id="a loose deadline waits its turn: latest start 15, the short one is due at 11",
        ),
        pytest.param(
            [cand("d", expected=5, arrival=10, deadline=12), cand("short", expected=1, arrival=8)],
            1.0,
            ["d", "short"],
            id="a tight deadline goes first: latest start 7, before the short one due at 9",
        ),
        pytest.param(
            [cand("b", arrival=5), cand("a", arrival=5)],
            1.0,
            ["a", "b"],
            id="ties: by id, so replicas agree",
        ),
    ],
)
def test_order_within_a_tenant(queue: list[Candidate], aging: float, expected: list[str]) -> None:
    assert order(queue, policy=SchedulerPolicy(aging=aging)) == expected


@pytest.mark.parametrize(
    ("slots", "holders", "queue", "expected"),
    [
        pytest.param(
            4,
            [],
            [*waiting("b", 2, B), *waiting("s", 3, S), *waiting("c", 2, C)],
            ["c0", "s0", "s1", "b0", "c1", "s2", "b1"],
            id="own seats first, by class (1 / 2 / 1 of 4), then the rest by class",
        ),
        pytest.param(
            4,
            many("c", 1, C),
            [*waiting("b", 2, B), *waiting("c", 2, C)],
            ["b0", "c0", "c1", "b1"],
            id="a class at its nominal waits behind a lower class below its own",
        ),
        pytest.param(
            100,
            [],
            [*waiting("b", 2, B), *waiting("c", 1, C)],
            ["c0", "b0", "b1"],
            id="on a big pool every class is within its seats: class order",
        ),
    ],
)
def test_order_across_classes(
    slots: int, holders: list[Holder], queue: list[Candidate], expected: list[str]
) -> None:
    assert order(queue, slots, holders) == expected


@pytest.mark.parametrize(
    ("candidate", "aging", "expected"),
    [
        pytest.param(cand("x", arrival=10, expected=4), 1.0, 14.0, id="arrival + size"),
        pytest.param(cand("x", arrival=10, expected=4), 0.5, 12.0, id="arrival + half the size"),
        pytest.param(
            cand("x", arrival=10, expected=4, deadline=30), 1.0, 26.0, id="deadline - size"
        ),
    ],
)
def test_due(candidate: Candidate, aging: float, expected: float) -> None:
    assert due(candidate, aging) == expected


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param(cand("x", expected=600), True, id="resumable long work borrows"),
        pytest.param(cand("x", expected=600, resumable=False), False, id="unresumable long no"),
        pytest.param(cand("x", expected=1.0, resumable=False), True, id="unresumable short yes"),
        pytest.param(cand("x", expected=1.5, resumable=False), False, id="just over: no"),
        pytest.param(cand("x", expected=600, preemptions=1), True, id="preempted once: yes"),
        pytest.param(cand("x", expected=600, preemptions=2), False, id="preempted twice: no"),
    ],
)
def test_may_borrow(candidate: Candidate, expected: bool) -> None:
    assert may_borrow(candidate, SchedulerPolicy()) is expected


def test_holders_do_not_reorder_a_class() -> None:
    """Only the counts of holders matter to the order, not who they are."""
    queue = waiting("s", 3, S)
    assert order(queue, 10, [holder("x", S, "other")]) == order(queue, 10, [])


@pytest.mark.parametrize(
    ("waiting", "aging", "expected"),
    [
        pytest.param([cand("b", B, arrival=NOW - 31)], 30.0, [S], id="batch past its aging"),
        pytest.param([cand("b", B, arrival=NOW - 29)], 30.0, [B], id="batch not yet"),
        pytest.param([cand("b", B, arrival=NOW - 1e6)], math.inf, [B], id="no aging"),
        pytest.param([cand("c", C, arrival=NOW - 99)], 30.0, [C], id="only batch ages"),
        pytest.param(
            [cand("s", S, arrival=NOW - 99), cand("b", B, arrival=NOW - 30)],
            30.0,
            [S, S],
            id="at the limit",
        ),
    ],
)
def test_competing(waiting: list[Candidate], aging: float, expected: list[Priority]) -> None:
    """A batch request that waited ``batch_aging`` since it arrived competes as standard."""
    policy = SchedulerPolicy(batch_aging=aging)
    assert [w.cls for w in competing(view(4, (), waiting), policy).waiting] == expected


def test_an_aged_batch_request_takes_a_standard_seat() -> None:
    """A batch request taken back twice may not borrow; while batch's own seat is held it
    waits however long, unless it ages into standard, whose seats are idle."""
    held = [holder("h", B, "t", preemptions=2)]
    spent = cand("b", B, arrival=NOW - 40, preemptions=2, expected=40.0)
    for aging, granted in [(math.inf, []), (30.0, ["b"])]:
        p = plan(view(5, held, [spent]), SchedulerPolicy(batch_aging=aging), 4)
        assert [c.id for c in p.grants] == granted
        assert [c.cls for c in p.grants] == [S] * len(granted)
