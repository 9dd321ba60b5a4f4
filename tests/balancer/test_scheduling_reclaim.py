"""Reclaim as tables: who is entitled, which holder is taken back, and every exclusion."""

from __future__ import annotations

import pytest

from ollama_balancer.core.scheduling import Reason, SchedulerPolicy, plan
from ollama_balancer.core.scheduling.reclaim import ends_in_time
from ollama_balancer.core.scheduling.view import Candidate, Holder
from tests.harness.scheduling_cases import NOW, B, C, S, cand, holder, many, view, waiting

CLS, TEN = Reason.CLASS_SHARE, Reason.TENANT_SHARE
STD6 = many("s", 6, S)  # standard at its nominal six of ten


def reclaimed(
    slots: int, holders: list[Holder], queue: list[Candidate], free: int = 0
) -> list[tuple[str, str, Reason]]:
    p = plan(view(slots, holders, queue), SchedulerPolicy(), free)
    return [(x.victim.lease, x.beneficiary.id, x.reason) for x in p.preemptions]


# Ten slots: critical 2, standard 6, batch 2 seats; budgets 0.5 / 1 / 10 s.
@pytest.mark.parametrize(
    ("holders", "queue", "expected"),
    [
        pytest.param(
            [*STD6, *many("b", 4, B)],
            [cand("c1", C)],
            [("b0", "c1", CLS)],
            id="critical takes back a seat batch borrowed",
        ),
        pytest.param(
            [*STD6, *(holder(f"b{i}", B, redo=5 - i) for i in range(4))],
            [cand("c1", C)],
            [("b3", "c1", CLS)],
            id="the cheapest to redo",
        ),
        pytest.param(
            [*STD6, *(holder(f"b{i}", B, started=float(i)) for i in range(4))],
            [cand("c1", C)],
            [("b3", "c1", CLS)],
            id="equally cheap: the youngest",
        ),
        pytest.param(
            [*many("s", 7, S), *many("b", 3, B, redo=9)],
            waiting("c", 2, C),
            [("b0", "c0", CLS), ("s0", "c1", CLS)],
            id="batch before standard, however cheap standard is",
        ),
        pytest.param(
            [*STD6, *many("b", 3, B), holder("c0", C)],
            waiting("c", 2, C),
            [("b0", "c0", CLS)],
            id="never a class's own nominal: batch back at its two seats is left alone",
        ),
        pytest.param(
            [*STD6, *many("b", 2, B)],
            [cand("c1", C)],
            [],
            id="nobody borrows: nothing to take (the idle seats are elsewhere)",
        ),
        pytest.param(
            [
                *STD6,
                holder("b0", B),
                holder("bx", B, generating=False, redo=0),
                *many("y", 2, B, redo=2),
            ],
            waiting("c", 2, C),
            [("b0", "c0", CLS), ("y0", "c1", CLS)],
            id="only holders already generating (a prefill would finish first anyway)",
        ),
        pytest.param(
            [
                *STD6,
                holder("b0", B),
                holder("bx", B, resumable=False, redo=0),
                *many("y", 2, B, redo=2),
            ],
            waiting("c", 2, C),
            [("b0", "c0", CLS), ("y0", "c1", CLS)],
            id="only holders that can resume",
        ),
        pytest.param(
            [
                *STD6,
                holder("b0", B),
                holder("bx", B, preemptions=2, redo=0),
                *many("y", 2, B, redo=2),
            ],
            waiting("c", 2, C),
            [("b0", "c0", CLS), ("y0", "c1", CLS)],
            id="never one preempted twice already",
        ),
        pytest.param(
            [*STD6, *many("b", 4, B)],
            waiting("c", 2, C),
            [("b0", "c0", CLS), ("b1", "c1", CLS)],
            id="one victim per entitled request",
        ),
        pytest.param(
            [*STD6, *many("b", 4, B)],
            waiting("c", 3, C),
            [("b0", "c0", CLS), ("b1", "c1", CLS)],
            id="only as many as the class is short of its nominal",
        ),
        pytest.param(
            [*many("s", 5, S), holder("s5", S, started=NOW - 999.7), *many("b", 4, B)],
            [cand("c1", C)],
            [],
            id="a slot that frees within the budget by itself: no preemption",
        ),
        pytest.param(
            [*many("s", 5, S), holder("s5", S, started=NOW - 999.7), *many("b", 4, B)],
            waiting("c", 2, C),
            [("b0", "c1", CLS)],
            id="the natural end serves the first, a preemption the second",
        ),
        pytest.param(
            [*many("s", 5, S), holder("s5", S, started=NOW - 1000.2), *many("b", 4, B)],
            [cand("c1", C)],
            [],
            id="a holder just past its expected end is about to end",
        ),
        pytest.param(
            [*STD6, holder("late", B, started=NOW - 1010), *many("x", 3, B, redo=9)],
            [cand("c1", C)],
            [("late", "c1", CLS)],
            id="a holder far past its expected end runs on: it may be taken",
        ),
        pytest.param(
            [*STD6, *many("b", 4, B)],
            [cand("c1", C)],
            [("b0", "c1", CLS)],
            id="batch needs ten seconds to reclaim, critical half a second",
        ),
        pytest.param(
            [*many("c", 4, C), *STD6],
            [cand("b1", B)],
            [("c0", "b1", CLS)],
            id="lent seats come back to their owner whatever its class",
        ),
    ],
)
def test_class_share_reclaim(
    holders: list[Holder], queue: list[Candidate], expected: list[tuple[str, str, Reason]]
) -> None:
    assert reclaimed(10, holders, queue) == expected


def test_requests_given_a_free_slot_need_no_victim() -> None:
    holders = [*many("s", 5, S), *many("b", 4, B)]
    assert reclaimed(10, holders, waiting("c", 2, C), free=1) == [("b0", "c1", CLS)]


@pytest.mark.parametrize(
    ("slots", "holders", "queue", "expected"),
    [
        pytest.param(
            8,
            many("h", 8, S, "heavy"),
            [cand("l1", S, "light")],
            [("h0", "l1", TEN)],
            id="a light tenant below its fair share takes a slot of the heavy one",
        ),
        pytest.param(
            8,
            [*many("h", 4, S, "heavy"), *many("l", 4, S, "light")],
            [cand("l9", S, "light")],
            [],
            id="a tenant at its fair share takes nothing",
        ),
        pytest.param(
            8,
            [*many("a", 5, S, "a"), *many("b", 3, S, "b")],
            waiting("c", 3, S, "c"),
            [("a0", "c0", TEN), ("a1", "c1", TEN)],
            id="from the tenant furthest over its share, down to its share and no further",
        ),
        pytest.param(
            6,
            many("h", 6, S, "heavy", weight=5.0),
            waiting("l", 2, S, "light"),
            [("h0", "l0", TEN)],
            id="weights 5:1 on six slots: the light tenant's share is one",
        ),
        pytest.param(
            10,
            [*many("a", 2, C, "a"), *STD6, *many("b", 2, B)],
            [cand("b1", C, "b")],
            [("a0", "b1", TEN)],
            id="a class at its nominal: its tenants share it",
        ),
        pytest.param(
            8,
            [*many("h", 7, S, "heavy"), holder("hx", S, "heavy", generating=False)],
            [cand("l1", S, "light")],
            [("h0", "l1", TEN)],
            id="tenant share: the same exclusions (not the one still reading its prompt)",
        ),
        pytest.param(
            6,
            [*many("h", 4, S, "heavy", weight=0.1), *many("l", 2, S, "light", weight=0.1)],
            [cand("l9", S, "light", weight=0.1)],
            [("h0", "l9", TEN)],
            id="weights 0.1 and 0.1 on six: shares of 3 seats, not 3.0000000000000004",
        ),
        pytest.param(
            8,
            many("h", 8, S, "heavy", resumable=False),
            [cand("l1", S, "light")],
            [],
            id="tenant share: nothing that cannot resume",
        ),
    ],
)
def test_tenant_share_reclaim(
    slots: int,
    holders: list[Holder],
    queue: list[Candidate],
    expected: list[tuple[str, str, Reason]],
) -> None:
    assert reclaimed(slots, holders, queue) == expected


@pytest.mark.parametrize(
    ("started", "expected", "budget", "in_time"),
    [
        pytest.param(NOW - 10, 10.5, 1.0, True, id="ends within the budget"),
        pytest.param(NOW - 10, 11.5, 1.0, False, id="ends after the budget"),
        pytest.param(NOW - 10, 9.5, 1.0, True, id="a little late: about to end"),
        pytest.param(NOW - 10, 8.5, 1.0, False, id="later than a budget past its end: runs on"),
    ],
)
def test_ends_in_time(started: float, expected: float, budget: float, in_time: bool) -> None:
    h = holder("h", started=started, expected=expected)
    assert ends_in_time(h, NOW, budget) is in_time


def test_the_plan_says_who_cancels_and_who_binds() -> None:
    holders = [*STD6, holder("b0", B, replica="r1", redo=0), *many("b", 3, B, replica="r2")]
    queue = [cand("c1", C, replica="r2"), cand("c2", C, replica="r3")]
    p = plan(view(10, holders, queue), SchedulerPolicy(), 0)
    assert [x.victim.lease for x in p.preempted_by("r1")] == ["b0"]
    assert [x.beneficiary.id for x in p.preempted_by("r2")] == ["c2"]
    assert p.preempted_by("r3") == ()
    p = plan(view(10, [], queue), SchedulerPolicy(), 1)
    assert [c.id for c in p.granted_to("r2")] == ["c1"]
    assert p.granted_to("r3") == ()
