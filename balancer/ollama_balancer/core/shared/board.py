"""The scheduler's board: who holds each slot, who waits, the fair-share clock (pure: no I/O).

The occupancy (:mod:`..occupancy`) counts slots; the scheduler of
:mod:`..scheduling` also needs to know *whose* they are — the class and tenant
of every lease, when it started and started generating, how long it is
expected to hold the slot, whether it can be resumed — and who is waiting for
one, on every replica.  That is the board: one immutable :class:`Board` value,
fleet-wide with shared state (every replica publishes its leases and waiting
requests), this replica's own without.

Writers keep a :class:`BoardBook` (explicit mutable state, no clock of its
own): this replica's local state writes it directly; the Redis mirror applies
the store's events and refreshes to it.  Readers take :meth:`BoardBook.board`,
rebuilt only after a change, and derive one pool's :class:`~..scheduling.PoolView`
with :meth:`Board.pool`.

Besides leases and waiting requests the board holds

* the **fair-share counters**, per (model, class, tenant) in slot-seconds per
  unit of weight (:mod:`..scheduling.fairness`);
* **reservations**: a slot taken back from a victim and promised to the
  request it was taken for, so that nobody else takes it when the victim lets
  go (:attr:`Board.reservations`); a reservation expires by itself;
* **reclaims**: leases being taken back, so that no second preemption targets
  them while their relay winds down.

Times are the local clock (the mirror converts the store's server times).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..priority import Priority, parse_priority
from ..scheduling import Candidate, Holder, PoolView, TenantKey

__all__ = [
    "PROMISED",
    "Board",
    "BoardBook",
    "Charge",
    "CounterKey",
    "Reservation",
    "SlotHolder",
    "Waiter",
    "holder_doc",
    "holder_of",
    "waiter_doc",
    "waiter_of",
]

CounterKey = tuple[str, Priority, str]
"""(canonical model, class, tenant): fair share is kept per pool and class."""

_EMPTY: Mapping[Any, Any] = MappingProxyType({})

#: How a promised seat's holder is named in a pool (no lease member starts so).
PROMISED = "promised:"


@dataclass(frozen=True, slots=True)
class Charge:
    """A change of one fair-share counter: raised to at least ``floor`` first (a tenant that
    was idle banks no credit), then moved by ``delta`` (slot-seconds per unit of weight)."""

    key: CounterKey
    delta: float
    floor: float = -math.inf

    def apply(self, value: float) -> float:
        return max(value, self.floor) + self.delta


@dataclass(frozen=True, slots=True)
class SlotHolder:
    """One lease as the scheduler sees it."""

    member: str
    """The lease's member (unique fleet-wide: replica/request/attempt)."""
    pod: str
    model: str
    replica: str
    request_id: str
    cls: Priority = Priority.STANDARD
    tenant: str = "-"
    weight: float = 1.0
    started: float = 0.0
    first_byte: float | None = None
    expected_seconds: float = 0.0
    preemptions: int = 0
    resumable: bool = False


@dataclass(frozen=True, slots=True)
class Waiter:
    """One request waiting for a slot, on some replica."""

    request_id: str
    model: str
    replica: str
    cls: Priority = Priority.STANDARD
    tenant: str = "-"
    weight: float = 1.0
    arrival: float = 0.0
    expected_seconds: float = 1.0
    deadline: float | None = None
    preemptions: int = 0
    resumable: bool = False
    pinned: bool = False
    """Bound to one named pod (``model@pod``): it waits for that pod, not for the pool."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A slot taken back from ``victim`` and promised to request ``beneficiary``."""

    beneficiary: str
    pod: str
    model: str
    victim: str
    """The victim lease's member."""
    until: float


@dataclass(frozen=True, slots=True)
class Board:
    """The scheduler's fleet-wide state at one moment (the maps are never mutated)."""

    holders: Mapping[str, SlotHolder] = field(default_factory=lambda: _EMPTY)
    waiters: Mapping[str, Waiter] = field(default_factory=lambda: _EMPTY)
    counters: Mapping[CounterKey, float] = field(default_factory=lambda: _EMPTY)
    reservations: Mapping[str, Reservation] = field(default_factory=lambda: _EMPTY)
    reclaiming: frozenset[str] = frozenset()
    """Members of leases being taken back."""

    def pool(self, model: str, slots: int, now: float) -> PoolView:
        """One model's pool for :func:`~..scheduling.plan`: its holders and (unpinned) waiters.

        A lease being reclaimed is left out, and its beneficiary (bound to the promised
        seat, not planned) holds that seat instead: its tenant and class have it from the
        promise on, so the next pump neither takes a second slot for the same tenant nor
        counts the seat as free.  A promise whose beneficiary this board does not know (its
        waiting entry not seen yet) takes its seat out of the pool as nobody's.
        """
        holders = [
            _holder(h, now)
            for h in self.holders.values()
            if h.model == model and h.member not in self.reclaiming
        ]
        unknown = 0
        for r in self.reservations.values():
            if r.model != model:
                continue
            w = self.waiters.get(r.beneficiary)
            if w is None:
                unknown += 1
            else:
                holders.append(_promised(r, w, now))
        waiting = tuple(
            _candidate(w)
            for w in self.waiters.values()
            if w.model == model and not w.pinned and w.request_id not in self.reservations
        )
        counters: dict[TenantKey, float] = {
            (cls, tenant): v for (m, cls, tenant), v in self.counters.items() if m == model
        }
        return PoolView(
            model=model,
            slots=max(0, slots - unknown),
            holders=tuple(holders),
            waiting=waiting,
            counters=counters,
            now=now,
        )

    def promised(self, pod: str, model: str, *, besides: str = "") -> int:
        """Seats of (pod, model) promised to a reclaim's beneficiary whose victim has let go
        (while the victim still holds its lease, that lease counts the seat)."""
        return sum(
            1
            for r in self.reservations.values()
            if r.pod == pod
            and r.model == model
            and r.beneficiary != besides
            and r.victim not in self.holders
        )

    def reserved_for(self, request_id: str, pod: str, model: str) -> bool:
        r = self.reservations.get(request_id)
        return r is not None and r.pod == pod and r.model == model

    def models_waiting(self) -> set[str]:
        return {w.model for w in self.waiters.values()}

    def active(self, model: str, cls: Priority) -> set[str]:
        """Tenants of ``model``'s class ``cls`` holding a slot or waiting for one."""
        out = {h.tenant for h in self.holders.values() if h.model == model and h.cls is cls}
        out.update(w.tenant for w in self.waiters.values() if w.model == model and w.cls is cls)
        return out

    def counter_floor(self, model: str, cls: Priority, tenant: str) -> float:
        """Where ``tenant``'s counter must start if it (re)joins the class now: the lowest
        counter of the class's active tenants (an idle tenant banks no credit), else 0."""
        others = [
            self.counters.get((model, cls, t), 0.0) for t in self.active(model, cls) if t != tenant
        ]
        if tenant in self.active(model, cls):
            return self.counters.get((model, cls, tenant), 0.0)
        return min(others, default=0.0)


def _holder(h: SlotHolder, now: float) -> Holder:
    return Holder(
        lease=h.member,
        pod=h.pod,
        replica=h.replica,
        cls=h.cls,
        tenant=h.tenant,
        weight=h.weight,
        started=h.started,
        first_byte=h.first_byte,
        expected_seconds=max(0.0, h.expected_seconds),
        # What a preemption throws away: the slot time spent so far (prompt and output), of
        # which a resume on the same slot gets most back from the prompt cache.
        redo_cost=max(0.0, now - h.started),
        preemptions=h.preemptions,
        resumable=h.resumable,
    )


def _promised(r: Reservation, w: Waiter, now: float) -> Holder:
    """The seat promised to ``w``, held by it from now: never a victim itself (it generates
    nothing yet and a promise cannot be taken back)."""
    return Holder(
        lease=PROMISED + r.beneficiary,
        pod=r.pod,
        replica=w.replica,
        cls=w.cls,
        tenant=w.tenant,
        weight=w.weight,
        started=now,
        expected_seconds=max(0.0, w.expected_seconds),
        preemptions=w.preemptions,
    )


def _candidate(w: Waiter) -> Candidate:
    return Candidate(
        id=w.request_id,
        replica=w.replica,
        cls=w.cls,
        tenant=w.tenant,
        weight=w.weight,
        arrival=w.arrival,
        expected_seconds=max(0.0, w.expected_seconds),
        deadline=w.deadline,
        preemptions=w.preemptions,
        resumable=w.resumable,
    )


class BoardBook:
    """The writer of a :class:`Board` (explicit state; every time is a parameter)."""

    def __init__(self) -> None:
        self._holders: dict[str, SlotHolder] = {}
        self._waiters: dict[str, Waiter] = {}
        self._counters: dict[CounterKey, float] = {}
        self._reservations: dict[str, Reservation] = {}
        self._reclaiming: set[str] = set()
        self._board: Board | None = Board()

    def board(self, now: float | None = None) -> Board:
        if now is not None:
            self.expire(now)
        if self._board is None:
            self._board = Board(
                holders=MappingProxyType(dict(self._holders)),
                waiters=MappingProxyType(dict(self._waiters)),
                counters=MappingProxyType(dict(self._counters)),
                reservations=MappingProxyType(dict(self._reservations)),
                reclaiming=frozenset(self._reclaiming),
            )
        return self._board

    def _changed(self) -> None:
        self._board = None

    # ---- leases
    def hold(self, holder: SlotHolder) -> None:
        self._holders[holder.member] = holder
        # the request got its slot: it no longer waits, and a reservation it had is used
        self._waiters.pop(holder.request_id, None)
        self._reservations.pop(holder.request_id, None)
        self._changed()

    def first_byte(self, member: str, at: float) -> None:
        h = self._holders.get(member)
        if h is not None and h.first_byte is None:
            self._holders[member] = replace(h, first_byte=at)
            self._changed()

    def release(self, member: str) -> SlotHolder | None:
        h = self._holders.pop(member, None)
        self._reclaiming.discard(member)
        if h is not None:
            self._changed()
        return h

    def holder(self, member: str) -> SlotHolder | None:
        return self._holders.get(member)

    def holders_of(self, replica: str) -> list[SlotHolder]:
        return [h for h in self._holders.values() if h.replica == replica]

    def forget_holders(self, keep: Iterable[str]) -> None:
        """Drop every holder not in ``keep`` (a refresh found their leases gone)."""
        keep = set(keep)
        gone = [m for m in self._holders if m not in keep]
        for m in gone:
            del self._holders[m]
            self._reclaiming.discard(m)
        if gone:
            self._changed()

    # ---- waiting requests
    def wait(self, waiter: Waiter) -> None:
        self._waiters[waiter.request_id] = waiter
        self._changed()

    def unwait(self, request_id: str) -> Waiter | None:
        w = self._waiters.pop(request_id, None)
        if w is not None:
            self._changed()
        return w

    def forget_waiters(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        gone = [r for r in self._waiters if r not in keep]
        for r in gone:
            del self._waiters[r]
        if gone:
            self._changed()

    # ---- fair share
    def set_counter(self, key: CounterKey, value: float) -> None:
        if math.isfinite(value) and self._counters.get(key) != value:
            self._counters[key] = value
            self._changed()

    def counter(self, key: CounterKey) -> float:
        return self._counters.get(key, 0.0)

    def charge(self, charge: Charge) -> float:
        value = charge.apply(self.counter(charge.key))
        self.set_counter(charge.key, value)
        return value

    # ---- reclaim
    def reclaim(self, reservation: Reservation) -> bool:
        """Mark the victim as being taken back and promise its slot; False if it already is,
        or the beneficiary already holds a promise."""
        if reservation.victim in self._reclaiming or reservation.beneficiary in self._reservations:
            return False
        self._reclaiming.add(reservation.victim)
        self._reservations[reservation.beneficiary] = reservation
        self._changed()
        return True

    def unreserve(self, beneficiary: str) -> Reservation | None:
        r = self._reservations.pop(beneficiary, None)
        if r is not None:
            self._changed()
        return r

    # ---- for a mirror of the store, which orders the changes itself (:mod:`.boardmirror`)
    def put_holder(self, holder: SlotHolder) -> None:
        """Set a holder as it is, touching nothing else (unlike :meth:`hold`)."""
        if self._holders.get(holder.member) != holder:
            self._holders[holder.member] = holder
            self._changed()

    def promise(self, reservation: Reservation) -> None:
        """Set a promise as it is (unlike :meth:`reclaim`, no check, no mark)."""
        if self._reservations.get(reservation.beneficiary) != reservation:
            self._reservations[reservation.beneficiary] = reservation
            self._changed()

    def mark_reclaiming(self, member: str, reclaiming: bool = True) -> None:
        if reclaiming and member not in self._reclaiming:
            self._reclaiming.add(member)
            self._changed()
        elif not reclaiming and member in self._reclaiming:
            self._reclaiming.discard(member)
            self._changed()

    def forget_counters(self, keep: Iterable[CounterKey]) -> None:
        keep = set(keep)
        gone = [k for k in self._counters if k not in keep]
        for k in gone:
            del self._counters[k]
        if gone:
            self._changed()

    def expire(self, now: float) -> None:
        gone = [b for b, r in self._reservations.items() if r.until <= now]
        for b in gone:
            del self._reservations[b]
        if gone:
            self._changed()


# ---- documents for the store (compact keys; times are the store's, in ms)
def _who_doc(e: SlotHolder | Waiter) -> dict[str, Any]:
    """What a holder's and a waiter's documents share: whose request it is and its work."""
    return {
        "m": e.model,
        "x": e.replica,
        "c": e.cls.value,
        "t": e.tenant,
        "w": e.weight,
        "e": round(e.expected_seconds, 3),
        "n": e.preemptions,
        "r": 1 if e.resumable else 0,
    }


def _who(doc: Mapping[str, Any], expected: float) -> dict[str, Any]:
    """:func:`_who_doc` read back, as keyword arguments (``expected``: when it has none)."""
    return {
        "model": str(doc["m"]),
        "replica": str(doc["x"]),
        "cls": parse_priority(str(doc.get("c", "standard"))),
        "tenant": str(doc.get("t", "-")),
        "weight": float(doc.get("w", 1.0)),
        "expected_seconds": float(doc.get("e", expected)),
        "preemptions": int(doc.get("n", 0)),
        "resumable": bool(doc.get("r", 0)),
    }


def holder_doc(h: SlotHolder, started_ms: int, first_byte_ms: int | None = None) -> dict[str, Any]:
    doc = {"p": h.pod, "q": h.request_id, "s": started_ms, **_who_doc(h)}
    if first_byte_ms is not None:
        doc["f"] = first_byte_ms
    return doc


def holder_of(member: str, doc: Mapping[str, Any], to_local: Any) -> SlotHolder | None:
    """A holder from its store document (``to_local`` turns server ms into local seconds)."""
    try:
        fb = doc.get("f")
        return SlotHolder(
            member=member,
            pod=str(doc["p"]),
            request_id=str(doc["q"]),
            started=to_local(int(doc["s"])),
            first_byte=None if fb is None else to_local(int(fb)),
            **_who(doc, 0.0),
        )
    except (KeyError, ValueError, TypeError):
        return None


def waiter_doc(w: Waiter, arrival_ms: int, deadline_ms: int | None) -> dict[str, Any]:
    doc = {"a": arrival_ms, **_who_doc(w)}
    if deadline_ms is not None:
        doc["d"] = deadline_ms
    if w.pinned:
        doc["i"] = 1
    return doc


def waiter_of(request_id: str, doc: Mapping[str, Any], to_local: Any) -> Waiter | None:
    try:
        d = doc.get("d")
        return Waiter(
            request_id=request_id,
            arrival=to_local(int(doc["a"])),
            deadline=None if d is None else to_local(int(d)),
            pinned=bool(doc.get("i", 0)),
            **_who(doc, 1.0),
        )
    except (KeyError, ValueError, TypeError):
        return None
