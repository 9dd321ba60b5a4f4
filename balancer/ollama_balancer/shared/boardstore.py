"""The scheduler's board in Redis/Valkey: one replica's side of it (thin I/O).

The board (:mod:`~ollama_balancer.core.shared.board`) is fleet-wide with a store:
where it lives and which script changes what is in
:mod:`~ollama_balancer.core.shared.scripts`.  :class:`~.store.RedisState` carries a
lease's holder document and its tenant's fair-share charge inside its own acquire and
release scripts, with the keys and arguments :class:`BoardStore` gives it; the rest
is here, one script (one round trip) each:

* waiting requests are posted and dropped; a request's post, drop and acquire reach
  the store in the order they were called (:meth:`BoardStore.in_order`);
* a reclaim marks its victim and promises its seat atomically, and the victim's
  replica, whichever it is, calls its :meth:`BoardStore.on_preempt` listeners when the
  event arrives (the replica that reclaimed its own lease at once);
* :meth:`BoardStore.reassert` puts back what this replica holds and waits for where
  the store lost it, and pushes its waiting requests' expiry one TTL ahead (the
  renewal calls it, like the leases' renewal);
* the refresh reads the board (:meth:`BoardStore.refresh_call`) in the same round trip
  as the counts; a store that lost its data (a new epoch) gets back the fair-share
  counters this replica last saw, the highest value winning.

Times a replica sends are relative to the server's now (see ``scripts.py``), so they
never depend on the clock offset the mirror measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..core.shared import scripts as S
from ..core.shared.board import (
    Board,
    Charge,
    CounterKey,
    Reservation,
    SlotHolder,
    Waiter,
    holder_doc,
    waiter_doc,
)
from ..core.shared.boardmirror import counter_field, parse_board_refresh
from ..core.shared.keys import Keys
from ..core.shared.mirror import Event, Mirror, parse_event
from ..core.shared.model import Lease, SlotFreed, field_of
from .connection import Call, StoreConnection

__all__ = ["FAIR_TTL_MS", "BoardStore", "charge_args"]

#: Fair-share counters are kept this long after their last charge (ms): a week without
#: one forgets a tenant's place.
FAIR_TTL_MS = 7 * 24 * 3600 * 1000


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def charge_args(charge: Charge | None) -> list[Any]:
    """The acquire and release scripts' counter arguments: field, delta, floor, ttl."""
    if charge is None or not math.isfinite(charge.delta):
        return ["", 0, "", FAIR_TTL_MS]
    floor = repr(float(charge.floor)) if math.isfinite(charge.floor) else ""
    return [counter_field(charge.key), repr(float(charge.delta)), floor, FAIR_TTL_MS]


class BoardStore:
    """One replica's operations on the fleet-wide board (its copy is ``mirror.board``)."""

    def __init__(
        self,
        connection: StoreConnection,
        keys: Keys,
        mirror: Mirror,
        *,
        replica: str,
        clock: Callable[[], float],
        lease_ttl: float,
        notify: Callable[[SlotFreed], None],
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.mirror = mirror
        self.replica = replica
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.notify = notify
        self._preempt: list[Callable[[str], None]] = []
        #: Own leases whose preempt listeners were called (once per lease).
        self._signalled: set[str] = set()
        #: request id -> (lock, users): one waiting-list operation at a time per request.
        self._waiting_ops: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def board(self) -> Board:
        return self.mirror.board.book.board(self.clock())

    # ------------------------------------------------------- the acquire and release
    def acquire_args(
        self,
        pod: str,
        model: str,
        request_id: str,
        member: str,
        holder: SlotHolder | None,
        charge: Charge | None,
    ) -> tuple[list[str], list[Any]]:
        """The acquire script's board keys and arguments: the request's holder document, its
        charge, and what its grant ends (its wait, its promise)."""
        k = self.keys
        keys = [k.holders(pod, model), k.holder_index, k.waiting, k.waiters, k.promises, k.fair]
        doc = ""
        if holder is not None:
            h = replace(
                holder,
                member=member,
                pod=pod,
                model=model,
                replica=self.replica,
                request_id=request_id,
            )
            doc = _json(holder_doc(h, 0))  # the script sets the start: the server's now
        return keys, [request_id, doc, *charge_args(charge)]

    def released(self, lease: Lease) -> None:
        self._signalled.discard(lease.member)

    def first_byte_call(self, lease: Lease) -> Call | None:
        """The call that notes a lease's first byte, if the board holds it without one."""
        holder = self.mirror.board.book.holder(lease.member)
        if holder is None or holder.first_byte is not None:
            return None
        k = self.keys
        return (S.FIRST_BYTE, [k.holders(*lease.key), k.seq], [lease.member, k.channel])

    # ------------------------------------------------------- events and refreshes
    def apply(self, ev: Event) -> None:
        """The board changes ``ev`` carries: seats given back, leases to preempt."""
        if not ev.board:
            return
        effects = self.mirror.board.apply(ev.seq, ev.board, self.mirror.local_time)
        for seat in effects.freed:
            self.notify(seat)
        for member in effects.reclaimed:
            self._preempted(member)

    def apply_reply(self, text: Any) -> None:
        """A board script's reply: its event (or '' when it changed nothing)."""
        if text:
            ev = parse_event(text)
            if ev is not None:
                self.mirror.apply_event(ev)
                self.apply(ev)

    def refresh_call(self) -> Call:
        k = self.keys
        return (
            S.BOARD,
            [
                k.holder_index,
                k.waiting,
                k.waiters,
                k.promises,
                k.reclaiming,
                k.fair,
                k.seq,
                k.epoch,
            ],
            [k.lease_prefix, k.holder_prefix],
        )

    async def refreshed(self, reply: Any) -> None:
        """Apply the ``board`` script's reply (after the counts: they measure the offset)."""
        if self.mirror.board.apply_refresh(parse_board_refresh(reply), self.mirror.local_time):
            # The store lost its data: nobody else can give the fair-share clock back.
            await self.reassert(counters=self.board().counters)
        now = self.board()
        self._signalled &= set(now.holders)
        for member in now.reclaiming:  # a reclaim whose event this replica missed
            self._preempted(member)

    # ------------------------------------------------------- waiting requests
    @contextlib.asynccontextmanager
    async def in_order(self, request_id: str) -> AsyncIterator[None]:
        """A request's waiting-list operations reach the store in the order they were called.

        Callers run them as tasks of their own, and redis-py sends concurrent commands on
        different connections (a new one first connects): a drop overtaking its post would
        leave the request on every replica's board until its entry expired."""
        entry = self._waiting_ops.get(request_id)
        if entry is None:
            entry = self._waiting_ops[request_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._waiting_ops[request_id]

    def _waiter_doc(self, w: Waiter, now: float) -> str:
        deadline = None if w.deadline is None else _ms(w.deadline - now)
        return _json(waiter_doc(w, _ms(now - w.arrival), deadline))

    async def post_waiter(self, waiter: Waiter) -> None:
        k = self.keys
        async with self.in_order(waiter.request_id):
            text = await self.connection.eval(
                S.POST_WAITER,
                [k.waiting, k.waiters, k.seq],
                [
                    waiter.request_id,
                    self._waiter_doc(waiter, self.clock()),
                    int(self.lease_ttl * 1000),
                    k.channel,
                ],
            )
        self.apply_reply(text)

    async def drop_waiter(self, request_id: str) -> None:
        async with self.in_order(request_id):
            await self.drop_waiters([request_id])

    async def drop_waiters(self, request_ids: Iterable[str]) -> None:
        """:meth:`drop_waiter` for each, in one round trip."""
        k = self.keys
        calls: list[Call] = [
            (
                S.DROP_WAITER,
                [k.waiting, k.waiters, k.promises, k.seq],
                [q, k.channel, k.lease_prefix],
            )
            for q in request_ids
        ]
        if calls:
            for text in await self.connection.batch(calls):
                self.apply_reply(text)

    # ------------------------------------------------------- reclaims
    async def reclaim(self, reservation: Reservation) -> bool:
        k, r = self.keys, reservation
        text = await self.connection.eval(
            S.RECLAIM,
            [k.lease(r.pod, r.model), k.holders(r.pod, r.model), k.promises, k.reclaiming, k.seq],
            [
                r.victim,
                r.beneficiary,
                r.pod,
                r.model,
                field_of(r.pod, r.model),
                max(1, _ms(r.until - self.clock())),
                k.channel,
            ],
        )
        if not text:
            return False
        self.apply_reply(text)  # calls this replica's listeners if the victim is its own
        return True

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._preempt.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._preempt.remove(listener)

        return unsubscribe

    def _preempted(self, member: str) -> None:
        if not member.startswith(f"{self.replica}/") or member in self._signalled:
            return
        self._signalled.add(member)
        for listener in list(self._preempt):
            listener(member)

    # ------------------------------------------------------- re-assertion
    async def reassert(
        self,
        holders: Iterable[SlotHolder] = (),
        waiters: Iterable[Waiter] = (),
        counters: Mapping[CounterKey, float] | None = None,
    ) -> int:
        """Put back what this replica holds and waits for where the store lost it, push its
        waiting requests' expiry one TTL ahead, raise ``counters`` to at least the values
        given.  One round trip; returns the entries put back.

        Call it after the leases' renewal: a holder document is kept only while its lease
        lives."""
        now = self.clock()
        held: list[Any] = []
        for h in holders:
            fb = None if h.first_byte is None else _ms(now - h.first_byte)
            doc = holder_doc(h, _ms(now - h.started), fb)
            held += [field_of(h.pod, h.model), h.member, _json(doc)]
        values: list[Any] = []
        for key, value in (counters or {}).items():
            if math.isfinite(value):
                values += [counter_field(key), repr(float(value))]
        waiting: list[Any] = []
        for w in waiters:
            waiting += [w.request_id, self._waiter_doc(w, now)]
        if not (held or values or waiting):
            return 0
        k = self.keys
        back, text = await self.connection.eval(
            S.REASSERT,
            [k.holder_index, k.waiting, k.waiters, k.fair, k.seq],
            [
                int(self.lease_ttl * 1000),
                k.holder_prefix,
                k.channel,
                len(held) // 3,
                len(values) // 2,
                FAIR_TTL_MS,
                *held,
                *values,
                *waiting,
            ],
        )
        self.apply_reply(text)
        return int(back)
