"""A pool as the board hands it to the scheduler while a slot is being taken back (pure).

The promised seat belongs to the beneficiary from the moment it is promised: its tenant and
class hold it in the view.  Counted as nobody's (the seat merely subtracted from the pool), the
beneficiary's tenant looks as starved as before the reclaim, and the next pump takes a second
slot for its next request — in ``bench fairness`` (4:1 weights over two replicas) that made
more than one preemption per request of the light tenant and gave it 1.8 slots of its 1.6.
"""

from __future__ import annotations

from ollama_balancer.core.priority import Priority
from ollama_balancer.core.scheduling import SchedulerPolicy, plan
from ollama_balancer.core.shared.board import Board, Reservation, SlotHolder, Waiter

MODEL = "m"
NOW = 100.0
SLOTS = 8


def _a(i: int) -> SlotHolder:
    """Tenant A (weight 4) generating on replica 1, 40 s of work each."""
    return SlotHolder(
        member=f"a{i}",
        pod=f"pod-{i // 2}",
        model=MODEL,
        replica="r1",
        request_id=f"qa{i}",
        tenant="A",
        weight=4.0,
        started=NOW - 5 - i,
        first_byte=NOW - 4 - i,
        expected_seconds=40.0,
        resumable=True,
    )


def _b(i: int) -> Waiter:
    """Tenant B (weight 1) waiting on replica 2."""
    return Waiter(
        request_id=f"qb{i}",
        model=MODEL,
        replica="r2",
        tenant="B",
        weight=1.0,
        arrival=NOW - 10 + i,
        expected_seconds=40.0,
        resumable=True,
    )


def _board(promised: bool) -> Board:
    """A holds every slot; B waits with three requests; with ``promised``, a0 is being
    taken back for qb0."""
    holders = {h.member: h for h in map(_a, range(SLOTS))}
    waiters = {w.request_id: w for w in map(_b, range(3))}
    counters = {(MODEL, Priority.STANDARD, "A"): 50.0, (MODEL, Priority.STANDARD, "B"): 50.0}
    if not promised:
        return Board(holders=holders, waiters=waiters, counters=counters)
    promise = Reservation("qb0", "pod-0", MODEL, "a0", NOW + 10)
    return Board(
        holders=holders,
        waiters=waiters,
        counters=counters,
        reservations={"qb0": promise},
        reclaiming=frozenset({"a0"}),
    )


def test_before_the_reclaim_b_is_owed_a_slot() -> None:
    decided = plan(_board(promised=False).pool(MODEL, SLOTS, NOW), SchedulerPolicy(), 0)
    # a0, the youngest, is the cheapest to redo
    assert [(p.victim.lease, p.beneficiary.id) for p in decided.preemptions] == [("a0", "qb0")]


def test_a_promised_seat_is_its_beneficiarys_and_no_second_slot_is_taken() -> None:
    """B's fair share is 8 × 1/5 = 1.6 seats; holding the promised one it is still below it,
    but A, at 7, no longer holds a whole seat beyond its 6.4: nothing more to take back."""
    pool = _board(promised=True).pool(MODEL, SLOTS, NOW)
    assert pool.slots == SLOTS
    held = {h.tenant: 0 for h in pool.holders}
    for h in pool.holders:
        held[h.tenant] += 1
    assert held == {"A": 7, "B": 1}
    assert [c.id for c in pool.waiting] == ["qb1", "qb2"]
    decided = plan(pool, SchedulerPolicy(), 0)
    assert decided.preemptions == ()
    promised = next(h for h in pool.holders if h.tenant == "B")
    assert promised.first_byte is None and not promised.resumable  # never a victim itself


def test_a_promise_whose_beneficiary_the_board_does_not_know_still_takes_its_seat() -> None:
    """The beneficiary's waiting entry has not reached this replica's mirror yet: the seat is
    taken out of the pool as nobody's."""
    board = _board(promised=True)
    board = Board(
        holders=board.holders,
        waiters={k: v for k, v in board.waiters.items() if k != "qb0"},
        counters=board.counters,
        reservations=board.reservations,
        reclaiming=board.reclaiming,
    )
    pool = board.pool(MODEL, SLOTS, NOW)
    assert pool.slots == SLOTS - 1
    assert {h.tenant for h in pool.holders} == {"A"}
