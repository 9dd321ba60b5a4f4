"""Wait estimates and admission as tables: slots freeing, class limits, reclaim caps, 429s."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ollama_balancer.core.queueing import Priority
from ollama_balancer.core.scheduling import ClassPolicy, SchedulerPolicy, admit, plan
from ollama_balancer.core.scheduling.view import Candidate, Holder
from tests.harness.scheduling_cases import NOW, B, C, S, cand, holder, view

DEFAULTS = SchedulerPolicy()
NO_CRITICAL_LENDING = SchedulerPolicy(critical=ClassPolicy(nominal=0.2, lendable=0.0))


def ends_in(lease: str, seconds: float, cls: Priority = S, tenant: str = "t", **kw: Any) -> Holder:
    """A holder expected to end ``seconds`` from now."""
    return holder(lease, cls, tenant, started=NOW - 10, expected=10 + seconds, **kw)


def ending(prefix: str, seconds: list[float], cls: Priority = S, **kw: Any) -> list[Holder]:
    return [ends_in(f"{prefix}{i}", s, cls, **kw) for i, s in enumerate(seconds)]


def new(cls: Priority = S, tenant: str = "t", **kw: Any) -> Candidate:
    return cand("new", cls, tenant, arrival=NOW, **kw)


@pytest.mark.parametrize(
    ("slots", "holders", "queue", "free", "candidate", "policy", "wait", "position", "entitled"),
    [
        pytest.param(4, [], [], 4, new(), DEFAULTS, 0.0, 0, True, id="a free slot: no wait"),
        pytest.param(
            2,
            ending("h", [10, 20]),
            [cand("w0", expected=5)],
            0,
            new(expected=5),
            DEFAULTS,
            15.0,
            1,
            False,
            id="behind one waiting: the slot it frees after the first end",
        ),
        pytest.param(
            2,
            ending("h", [10, 20]),
            [cand("w0", expected=30)],
            0,
            new(expected=5),
            DEFAULTS,
            20.0,
            1,
            False,
            id="the other holder's end comes first",
        ),
        pytest.param(
            10,
            ending("s", [50] * 10, resumable=True),
            [],
            0,
            new(C),
            DEFAULTS,
            0.5 + 0.2,
            0,
            True,
            id="entitled to its class's seats: reclaim caps the wait at budget + cancel",
        ),
        pytest.param(
            10,
            ending("s", [50] * 10, resumable=False),
            [],
            0,
            new(C),
            DEFAULTS,
            50.0,
            0,
            True,
            id="entitled, but nothing can be taken back: the natural end",
        ),
        pytest.param(
            8,
            ending("h", [50] * 8, tenant="heavy"),
            [],
            0,
            new(S, "light"),
            DEFAULTS,
            1.0 + 0.2,
            0,
            True,
            id="a tenant below its fair share: standard's budget + cancel",
        ),
        pytest.param(
            10,
            ending("b", [100] * 8, B),
            [],
            2,
            new(B),
            NO_CRITICAL_LENDING,
            100.0,
            0,
            False,
            id="free slots its class may not use (critical's, not lent) do not count",
        ),
        pytest.param(
            10,
            ending("b", [30, 60], B),
            [],
            8,
            new(B, expected=600, resumable=False),
            DEFAULTS,
            30.0,
            0,
            False,
            id="long work that cannot resume waits for its class's own seats",
        ),
        pytest.param(
            10,
            ending("b", [30, 60], B),
            [],
            8,
            new(B, expected=600),
            DEFAULTS,
            0.0,
            0,
            False,
            id="resumable long work borrows a free seat",
        ),
        pytest.param(
            0, [], [], 0, new(), DEFAULTS, math.inf, 0, False, id="no warm slot: no estimate"
        ),
    ],
)
def test_estimate(
    slots: int,
    holders: list[Holder],
    queue: list[Candidate],
    free: int,
    candidate: Candidate,
    policy: SchedulerPolicy,
    wait: float,
    position: int,
    entitled: bool,
) -> None:
    a = admit(view(slots, holders, queue), policy, candidate, free)
    assert a.admitted
    assert a.wait == pytest.approx(wait)
    assert (a.position, a.entitled, a.retry_after) == (position, entitled, None)


@pytest.mark.parametrize(
    ("ends", "admitted", "retry_after"),
    [
        pytest.param([120.0, 130.0], True, None, id="within the maximum wait: admitted"),
        pytest.param([200.0, 210.0], False, 80, id="beyond: 429, retry when it has drained"),
        pytest.param([120.3, 130.0], False, 1, id="just beyond: retry after a second"),
        pytest.param([99999.0, 99999.0], False, 3600, id="retry within the hour at most"),
    ],
)
def test_admission(ends: list[float], admitted: bool, retry_after: int | None) -> None:
    a = admit(view(2, ending("h", ends)), DEFAULTS, new(), 0)
    assert (a.admitted, a.retry_after) == (admitted, retry_after)
    assert a.wait == pytest.approx(ends[0])


def test_a_tenant_inside_its_share_is_never_refused() -> None:
    """Light waits 500 s for heavy's unresumable work, beyond max_wait, and is admitted."""
    a = admit(
        view(8, ending("h", [500.0] * 8, tenant="heavy", resumable=False)),
        DEFAULTS,
        new(S, "light"),
        0,
    )
    assert (a.admitted, a.entitled, a.wait) == (True, True, 500.0)
    again = admit(view(8, ending("h", [500.0] * 8, tenant="light")), DEFAULTS, new(S, "light"), 0)
    assert (again.admitted, again.entitled, again.retry_after) == (False, False, 380)


def test_batch_waits_longer_before_refusal() -> None:
    """Batch's maximum wait is 300 s, standard's 120 s: the same wait, two answers."""
    slow = ending("b", [200.0, 200.0], B, tenant="x")
    assert admit(view(2, slow), DEFAULTS, new(B, "x"), 0).admitted
    slow = ending("s", [200.0, 200.0], S, tenant="x")
    assert not admit(view(2, slow), DEFAULTS, new(S, "x"), 0).admitted


def test_free_slots_default_to_the_slots_nobody_holds() -> None:
    a = admit(view(3, ending("h", [40.0, 50.0])), DEFAULTS, new())
    assert a.wait == 0.0


def test_the_plan_estimates_every_waiting_request() -> None:
    queue = [cand("a", expected=5, arrival=0), cand("b", expected=5, arrival=1)]
    p = plan(view(2, ending("h", [10.0]), queue), DEFAULTS, 1)
    assert [c.id for c in p.grants] == ["a"]
    assert p.waits == {"a": 0.0, "b": pytest.approx(5.0)}
    lean = plan(view(2, ending("h", [10.0]), queue), DEFAULTS, 1, estimate=False)
    assert (lean.grants, lean.waits) == (p.grants, {})


def test_an_arrival_already_waiting_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="already waiting"):
        admit(view(2, [], [cand("new")]), DEFAULTS, new())
