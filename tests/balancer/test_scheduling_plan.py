"""The whole pump: the worked example of docs/scheduling.md §3, and properties of any plan."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_balancer.core.queueing import Priority
from ollama_balancer.core.scheduling import (
    Candidate,
    ClassPolicy,
    Holder,
    PoolView,
    Reason,
    SchedulePlan,
    SchedulerPolicy,
    admit,
    lift,
    plan,
    seats,
)
from tests.harness.scheduling_cases import NOW, B, C, S, cand, holder, view

CLASSES = list(Priority)
TENANTS = ["a", "b", "c"]


def test_worked_example() -> None:
    """docs/scheduling.md §3: 4 pods × 2 slots, a heavy tenant holds all 8."""
    heavy = [
        holder(
            f"h{i}",
            S,
            "heavy",
            pod=f"pod-{i // 2}",
            started=NOW - 5 - i,
            expected=40.0,
            redo=1.0 + 0.2 * i,
        )
        for i in range(8)
    ]
    backlog = [cand(f"q{i}", S, "heavy", arrival=NOW - 3 + i, expected=40.0) for i in range(3)]
    counters = {(S, "heavy"): 320.0, (S, "light"): 12.0}
    pool = view(8, heavy, backlog, counters)
    policy = SchedulerPolicy()

    shares = {s.cls: s for s in plan(pool, policy, 0).shares}
    assert (shares[C].nominal, shares[S].nominal, shares[B].nominal) == (2, 5, 1)
    assert (shares[S].held, shares[S].borrowed, shares[C].lent, shares[B].lent) == (8, 3, 2, 1)

    # The light tenant comes back after a while: its counter is lifted, no credit banked.
    assert lift(counters, S, "light", ["heavy"]) == 320.0
    counters[(S, "light")] = 320.0
    light = cand("light", S, "light", arrival=NOW, expected=4.0)
    a = admit(view(8, heavy, backlog, counters), policy, light, 0)
    assert (a.admitted, a.entitled, a.position) == (True, True, 0)
    assert a.wait == pytest.approx(1.2)  # standard's budget 1 s + cancel latency 0.2 s

    urgent = cand("urgent", C, "ops", arrival=NOW, expected=2.0)
    p = plan(view(8, heavy, (*backlog, light, urgent), counters), policy, 0)
    assert [c.id for c in p.order] == ["urgent", "light", "q0", "q1", "q2"]
    assert p.grants == ()
    assert [(x.victim.lease, x.beneficiary.id, x.reason) for x in p.preemptions] == [
        ("h0", "urgent", Reason.CLASS_SHARE),
        ("h1", "light", Reason.TENANT_SHARE),
    ]
    assert p.waits["q0"] == pytest.approx(30.0)  # the third end, h5, at +30 s


# ---- properties of any plan

fraction = st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])
class_policy = st.builds(
    ClassPolicy,
    nominal=fraction,
    lendable=fraction,
    borrow_limit=fraction,
    max_wait=st.sampled_from([1.0, 120.0]),
    wait_budget=st.sampled_from([0.0, 1.0, 10.0]),
)
policies = st.builds(
    SchedulerPolicy,
    critical=class_policy,
    standard=class_policy,
    batch=st.builds(ClassPolicy, nominal=st.sampled_from([0.2, 1.0]), lendable=fraction),
    max_preemptions=st.integers(0, 2),
    aging=st.sampled_from([0.0, 1.0]),
    unresumable_borrow=st.sampled_from([0.0, 1.0, 30.0]),
)
holders = st.builds(
    Holder,
    lease=st.just(""),
    pod=st.sampled_from(["p0", "p1"]),
    replica=st.sampled_from(["r0", "r1"]),
    cls=st.sampled_from(CLASSES),
    tenant=st.sampled_from(TENANTS),
    weight=st.sampled_from([1.0, 2.0, 5.0]),
    started=st.floats(0.0, NOW),
    first_byte=st.one_of(st.none(), st.just(1.0)),
    expected_seconds=st.floats(0.0, 200.0),
    redo_cost=st.floats(0.0, 5.0),
    preemptions=st.integers(0, 3),
    resumable=st.booleans(),
)
candidates = st.builds(
    Candidate,
    id=st.just(""),
    replica=st.sampled_from(["r0", "r1"]),
    cls=st.sampled_from(CLASSES),
    tenant=st.sampled_from(TENANTS),
    weight=st.sampled_from([1.0, 2.0, 5.0]),
    arrival=st.floats(0.0, NOW),
    expected_seconds=st.floats(0.0, 200.0),
    deadline=st.one_of(st.none(), st.floats(NOW, 2 * NOW)),
    preemptions=st.integers(0, 3),
    resumable=st.booleans(),
)


@st.composite
def pools(draw: st.DrawFn) -> tuple[PoolView, int]:
    slots = draw(st.integers(0, 12))
    hs = draw(st.lists(holders, max_size=slots))
    ws = draw(st.lists(candidates, max_size=15))
    counters = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(CLASSES), st.sampled_from(TENANTS)), st.floats(0.0, 500.0)
        )
    )
    pool = PoolView(
        "m",
        slots,
        tuple(replace(h, lease=f"h{i}") for i, h in enumerate(hs)),
        tuple(replace(w, id=f"w{i}") for i, w in enumerate(ws)),
        counters,
        NOW,
    )
    free = draw(st.integers(0, slots - len(hs)))
    return pool, free


@settings(max_examples=300, deadline=None)
@given(case=pools(), policy=policies)
def test_plan_invariants(case: tuple[PoolView, int], policy: SchedulerPolicy) -> None:
    pool, free = case
    p = plan(pool, policy, free)
    nominal = seats(pool.slots, policy)
    held = Counter(h.cls for h in pool.holders)

    assert sorted(c.id for c in p.order) == sorted(c.id for c in pool.waiting)
    assert len(p.grants) <= free
    granted = {c.id for c in p.grants}
    assert len(granted) == len(p.grants)

    victims = [x.victim for x in p.preemptions]
    beneficiaries = [x.beneficiary for x in p.preemptions]
    assert len({v.lease for v in victims}) == len(victims)
    assert len({b.id for b in beneficiaries}) == len(beneficiaries)
    assert not granted & {b.id for b in beneficiaries}
    for v in victims:
        assert v.preemptions < policy.max_preemptions
        assert v.first_byte is not None and v.resumable

    lost = Counter(v.cls for v in victims)
    gained = Counter(b.cls for b in beneficiaries)
    for cls in CLASSES:
        # Never below its nominal seats (or what it held, if less) because of preemption.
        assert held[cls] - lost[cls] + gained[cls] >= min(held[cls], nominal[cls])
        # Grants borrow only within the class's borrow limit.
        after = held[cls] + sum(1 for c in p.grants if c.cls is cls)
        borrow_max = int(pool.slots * policy.of(cls).borrow_limit + 1e-9)
        assert after - nominal[cls] <= max(held[cls] - nominal[cls], borrow_max)

    assert set(p.waits) == {c.id for c in pool.waiting}
    assert all(w >= 0.0 for w in p.waits.values())


@settings(max_examples=100, deadline=None)
@given(case=pools(), policy=policies, seed=st.integers(0, 2**16))
def test_replicas_that_merge_in_another_order_decide_the_same(
    case: tuple[PoolView, int], policy: SchedulerPolicy, seed: int
) -> None:
    """Every replica builds the view from the shared state in its own order: same plan."""
    pool, free = case
    rng = random.Random(seed)
    hs, ws = list(pool.holders), list(pool.waiting)
    rng.shuffle(hs)
    rng.shuffle(ws)
    shuffled = PoolView(pool.model, pool.slots, tuple(hs), tuple(ws), pool.counters, pool.now)
    assert plan(shuffled, policy, free) == plan(pool, policy, free)


@pytest.mark.parametrize(
    ("order", "granted", "expected"),
    [
        pytest.param("", "", {}, id="nobody waits"),
        pytest.param("m1 m2", "", {"m1": 0, "m2": 0}, id="only mine"),
        pytest.param("o1 m1 o2 m2", "", {"m1": 1, "m2": 2}, id="interleaved"),
        pytest.param("o1 m1 o2 m2", "o1", {"m1": 0, "m2": 1}, id="a granted one takes a slot"),
        pytest.param("o1 m1 o2 m2", "m1", {"m2": 2}, id="mine granted: not waiting"),
    ],
)
def test_others_ahead(order: str, granted: str, expected: dict[str, int]) -> None:
    """Per request of one replica left waiting: the other replicas' requests ahead of it."""
    cands = [cand(x, replica="mine" if x.startswith("m") else "other") for x in order.split()]
    grants = [c for c in cands if c.id in granted.split()]
    p = SchedulePlan(order=tuple(cands), grants=tuple(grants), preemptions=(), shares=())
    assert p.others_ahead("mine") == expected
