"""Fair share as tables: counters in slot-seconds, no banked credit, fair shares, Jain's index."""

from __future__ import annotations

import pytest

from ollama_balancer.core.scheduling import (
    SchedulerPolicy,
    TenantKey,
    charge_completion,
    charge_dispatch,
    jain,
    lift,
    plan,
    weighted_jain,
)
from ollama_balancer.core.scheduling.fairness import fair_shares, start_counter
from ollama_balancer.core.scheduling.view import Candidate
from tests.harness.scheduling_cases import B, S, cand, view


@pytest.mark.parametrize(
    ("counter", "expected", "weight", "after"),
    [
        pytest.param(10.0, 4.0, 1.0, 14.0, id="weight 1: the slot-seconds themselves"),
        pytest.param(10.0, 4.0, 2.0, 12.0, id="weight 2: half as fast"),
        pytest.param(0.0, 0.0, 1.0, 0.0, id="nothing expected, nothing charged"),
    ],
)
def test_charge_dispatch(counter: float, expected: float, weight: float, after: float) -> None:
    assert charge_dispatch(counter, expected, weight) == after


@pytest.mark.parametrize(
    ("expected", "actual", "weight", "after"),
    [
        pytest.param(4.0, 10.0, 2.0, 15.0, id="ran longer than estimated: the rest is charged"),
        pytest.param(4.0, 1.0, 1.0, 9.0, id="ended early (or preempted): the rest is refunded"),
        pytest.param(4.0, 4.0, 1.0, 12.0, id="the estimate was right: no correction"),
    ],
)
def test_charge_completion(expected: float, actual: float, weight: float, after: float) -> None:
    assert charge_completion(12.0, expected, actual, weight) == after


def test_dispatch_then_completion_charges_the_actual_time() -> None:
    c = charge_dispatch(5.0, 30.0, 3.0)
    assert charge_completion(c, 30.0, 9.0, 3.0) == pytest.approx(5.0 + 9.0 / 3.0)


@pytest.mark.parametrize(
    ("counters", "tenant", "active", "after"),
    [
        pytest.param(
            {(S, "a"): 100.0, (S, "b"): 50.0, (S, "c"): 5.0},
            "c",
            ["a", "b"],
            50.0,
            id="an idle tenant comes back at the lowest active counter: no banked credit",
        ),
        pytest.param(
            {(S, "a"): 100.0, (S, "b"): 50.0, (S, "c"): 80.0},
            "c",
            ["a", "b"],
            80.0,
            id="a tenant ahead of the others keeps its counter: no debt shed by leaving",
        ),
        pytest.param(
            {(S, "a"): 100.0, (S, "b"): 50.0},
            "new",
            ["a", "b"],
            50.0,
            id="a new tenant starts at the lowest active counter",
        ),
        pytest.param(
            {(S, "a"): 100.0, (S, "c"): 5.0},
            "c",
            [],
            100.0,
            id="nobody active: the highest counter of the class, so returners start even",
        ),
        pytest.param(
            {(B, "a"): 999.0, (S, "a"): 10.0},
            "new",
            [],
            10.0,
            id="other classes' counters do not count",
        ),
        pytest.param({}, "new", [], 0.0, id="a class nobody used yet starts at zero"),
        pytest.param(
            {(S, "a"): 100.0, (S, "c"): 5.0},
            "c",
            ["a", "fresh"],
            100.0,
            id="active tenants without a counter yet do not pull the floor down",
        ),
        pytest.param(
            {(S, "a"): 100.0, (S, "c"): 5.0},
            "c",
            ["c", "a"],
            100.0,
            id="the tenant itself in the active list is not its own floor",
        ),
    ],
)
def test_lift(
    counters: dict[TenantKey, float], tenant: str, active: list[str], after: float
) -> None:
    assert lift(counters, S, tenant, active) == after


def test_start_counter_ignores_the_other_classes() -> None:
    counters = {(B, "x"): 7.0, (S, "y"): 3.0}
    assert start_counter(counters, B, ["y"]) == 7.0


@pytest.mark.parametrize(
    ("seats", "weights", "expected"),
    [
        pytest.param(8.0, {"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 6.0}, id="by weight"),
        pytest.param(3.0, {"a": 1.0, "b": 1.0}, {"a": 1.5, "b": 1.5}, id="fractions stay"),
        pytest.param(4.0, {}, {}, id="nobody active"),
    ],
)
def test_fair_shares(seats: float, weights: dict[str, float], expected: dict[str, float]) -> None:
    assert fair_shares(seats, weights) == expected


@pytest.mark.parametrize(
    ("values", "index"),
    [
        pytest.param([1.0, 1.0, 1.0], 1.0, id="equal: 1"),
        pytest.param([1.0, 0.0, 0.0, 0.0], 0.25, id="one got all: 1/n"),
        pytest.param([1.0, 2.0], 0.9, id="1 and 2: 9 / 10"),
        pytest.param([], 1.0, id="nobody: fair"),
        pytest.param([0.0, 0.0], 1.0, id="nobody served: fair"),
    ],
)
def test_jain(values: list[float], index: float) -> None:
    assert jain(values) == pytest.approx(index)


@pytest.mark.parametrize(
    ("served", "weights", "backlogged", "index"),
    [
        pytest.param(
            {"a": 40.0, "b": 10.0}, {"a": 4.0, "b": 1.0}, ["a", "b"], 1.0, id="4:1 as weighted"
        ),
        pytest.param(
            {"a": 25.0, "b": 25.0}, {"a": 4.0, "b": 1.0}, ["a", "b"], 0.735, id="1:1 against 4:1"
        ),
        pytest.param(
            {"a": 10.0, "b": 10.0, "idle": 1.0},
            {},
            ["a", "b"],
            1.0,
            id="a tenant that was not backlogged is left out; a missing weight is 1",
        ),
    ],
)
def test_weighted_jain(
    served: dict[str, float], weights: dict[str, float], backlogged: list[str], index: float
) -> None:
    assert weighted_jain(served, weights, backlogged) == pytest.approx(index, abs=1e-3)


def order(queue: list[Candidate], counters: dict[TenantKey, float] | None = None) -> list[str]:
    return [c.id for c in plan(view(100, [], queue, counters), SchedulerPolicy(), 0).order]


def two(prefix: str, tenant: str, n: int, at: float, weight: float = 1.0) -> list[Candidate]:
    return [cand(f"{prefix}{i}", S, tenant, arrival=at + i, weight=weight) for i in range(n)]


@pytest.mark.parametrize(
    ("queue", "counters", "expected"),
    [
        pytest.param(
            [*two("h", "heavy", 4, 0), *two("l", "light", 2, 10)],
            None,
            ["h0", "l0", "h1", "l1", "h2", "h3"],
            id="equal counters: the tenants take turns, whoever sent more",
        ),
        pytest.param(
            [*two("a", "a", 4, 0, weight=2.0), *two("b", "b", 4, 0)],
            None,
            ["a0", "b0", "a1", "b1", "a2", "a3", "b2", "b3"],
            id="weight 2 against 1: two slot-seconds for one",
        ),
        pytest.param(
            [*two("h", "heavy", 3, 0), *two("l", "light", 3, 50)],
            {(S, "heavy"): 10.0},
            ["h0", "l0", "h1", "l1", "h2", "l2"],
            id="a tenant without a counter starts at the lowest active one",
        ),
        pytest.param(
            [*two("h", "heavy", 3, 0), *two("l", "light", 3, 50)],
            {(S, "heavy"): 10.0, (S, "light"): 0.0},
            ["l0", "l1", "l2", "h0", "h1", "h2"],
            id="a tenant served less goes first until it catches up",
        ),
        pytest.param(
            [cand("long", S, "a", expected=10.0), *two("b", "b", 12, 0)],
            None,
            [
                "b0",
                "long",
                *(f"b{i}" for i in range(1, 12)),
            ],
            id="charged in slot-seconds: one long request costs ten short ones",
        ),
    ],
)
def test_tenants_take_turns_by_counter(
    queue: list[Candidate], counters: dict[TenantKey, float] | None, expected: list[str]
) -> None:
    assert order(queue, counters) == expected
