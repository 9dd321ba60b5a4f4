"""Shared state that never fails a request: Redis while it answers, local state otherwise.

* **At start** the store is tried once; unreachable → the balancer serves with
  local state at once (logged, ``status()["mode"] == "fallback"``, the
  ``ollama_fleet_shared_state_up`` gauge at 0) and a background task connects
  when the store appears.
* **Mid-run** the first operation that fails or exceeds ``op_timeout`` (or the
  events channel dropping, or a health ping every ``health_interval`` when the
  replica is idle) switches to local state: within one second, and the failed
  operation itself is served locally, so no request sees it.
* **Back**: the leases and quota tickets this replica still holds are
  re-registered, those it gave back meanwhile are removed (:mod:`.resync`), the
  mirror is refreshed, the channel re-subscribed, and sharing resumes.

Local state shadows this replica's own leases and tickets all along (see
:mod:`.local`), so the switch starts from this replica's true counts.

The scheduler's board follows the same rule: :meth:`FallbackState.board` is the
store's (fleet-wide) while it serves, else local state's, which shadows this
replica's own holders and waiting requests all along.  When the store fails,
local state takes over the fair-share counters the mirror last showed; when it
is back, this replica's holders, waiting requests and counters are re-asserted
(:meth:`RedisState.reassert`), and again with every renewal of its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared.board import Board, Charge, Reservation, SlotHolder, Waiter
from ..core.shared.local import LocalState
from ..core.shared.model import Grant, Learned, Lease, QuotaTicket, QuotaVerdict, SlotFreed
from ..core.shared.protocol import StoreUnavailable
from ..core.shared.resync import Entry, entries_of, plan_resync
from .store import RedisState

__all__ = ["FallbackState", "SharedObserver"]

T = TypeVar("T")

EVENT_UP = "shared_state_up"
EVENT_DOWN = "shared_state_down"
EVENT_UNREACHABLE = "shared_state_unreachable"


class SharedObserver(Protocol):
    """What the wrapper reports (the Prometheus side is :mod:`.metrics`)."""

    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...


class _Quiet:
    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...


class FallbackState:
    def __init__(
        self,
        store: RedisState,
        local: LocalState,
        *,
        renew_interval: float = 10.0,
        refresh_interval: float = 1.0,
        health_interval: float = 0.5,
        reconnect_interval: float = 1.0,
        observer: SharedObserver | None = None,
        log: Any = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.store = store
        self.local = local
        self.renew_interval = renew_interval
        self.refresh_interval = refresh_interval
        self.health_interval = health_interval
        self.reconnect_interval = reconnect_interval
        self.observer: SharedObserver = observer or _Quiet()
        self.log = log or logging.getLogger("ollama_fleet.shared")
        self.timer = timer
        # The store and the local state share one signal and one affinity map, so a
        # waiter or a lookup never cares which of them is serving.
        store.signal = local.signal
        store.affinities = local.affinities
        self.up = False
        self.fallbacks = 0
        self.since = local.clock()
        self.last_error = ""
        self._leases: dict[str, Lease] = {}
        self._tickets: dict[str, QuotaTicket] = {}
        self._given_back: set[Entry] = set()
        self._last_ok = 0.0
        self._reclaimed_seen = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ state
    def own_leases(self) -> list[Lease]:
        """Leases this replica holds now (for the held-leases gauge)."""
        return list(self._leases.values())

    def status(self) -> dict[str, object]:
        return {
            "mode": "shared" if self.up else "fallback",
            "store": self.store.address.redacted(),
            "replica": self.store.replica,
            "up": self.up,
            "since": self.since,
            "fallbacks": self.fallbacks,
            "last_error": self.last_error,
            "leases_held": len(self._leases),
            "leases_reclaimed": self.store.reclaimed,
        }

    def occupancy(self) -> Occupancy:
        if self.up and self.store.mirror.synced:
            return self.store.occupancy()
        return self.local.occupancy()

    def affinity(self, key: str) -> str | None:
        return self.local.affinity(key)

    def board(self) -> Board:
        if self.up and self.store.mirror.synced:
            return self.store.board()
        return self.local.board()

    def _down(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if not self.up:
            return
        self.up = False
        self.fallbacks += 1
        self.since = self.local.clock()
        if self.store.mirror.synced:
            # The fleet's fair-share clock as last seen goes on locally (an idle tenant
            # would otherwise come back ahead of the others).
            for key, value in self.store.board().counters.items():
                self.local.book.set_counter(key, value)
        self.store.mirror.reset()
        self.observer.state_up(False)
        self.observer.fallback()
        self.log.warning("%s: serving with local state: %s", EVENT_DOWN, exc)
        if self._listener is not None:
            self._listener.cancel()
        self._wake.set()

    def _ok(self) -> None:
        self._last_ok = self.local.clock()
        gone = self.store.reclaimed - self._reclaimed_seen
        if gone:
            self._reclaimed_seen = self.store.reclaimed
            self.observer.reclaimed(gone)

    async def _shared(self, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run ``op`` on the store if it is up: (True, result), or (False, None)."""
        if not self.up:
            return False, None
        try:
            result = await op()
        except StoreUnavailable as exc:
            self._down(exc)
            return False, None
        self._ok()
        return True, result

    # ------------------------------------------------------------ slots
    async def acquire(
        self,
        pod: str,
        model: str,
        *,
        slots: int,
        request_id: str,
        cold: bool = False,
        overflow: bool = False,
        holder: SlotHolder | None = None,
        charge: Charge | None = None,
    ) -> Grant:
        t0 = self.timer()
        ok, grant = await self._shared(
            lambda: self.store.acquire(
                pod,
                model,
                slots=slots,
                request_id=request_id,
                cold=cold,
                overflow=overflow,
                holder=holder,
                charge=charge,
            )
        )
        if ok and grant is not None:
            self.observer.acquire_seconds(self.timer() - t0, grant.lease is not None)
            lease = grant.lease
            if lease is not None:
                self.local.take(
                    pod,
                    model,
                    slots=slots,
                    request_id=request_id,
                    cold=lease.loads,
                    overflow=True,
                    member=lease.member,
                    holder=holder,  # the shadow: the counters are the store's meanwhile
                )
                self._leases[lease.member] = lease
            return grant
        grant = self.local.take(
            pod,
            model,
            slots=slots,
            request_id=request_id,
            cold=cold,
            overflow=overflow,
            holder=holder,
            charge=charge,
        )
        if grant.lease is not None:
            self._leases[grant.lease.member] = grant.lease
        return grant

    def _current(self, lease: Lease) -> Lease:
        # Re-registration after an outage turns a local lease into a shared one.
        return self._leases.get(lease.member, lease)

    async def first_byte(self, lease: Lease) -> float | None:
        lease = self._current(lease)
        seconds = await self.local.first_byte(lease)
        if lease.shared:  # a load ends, the board notes it (no round trip when neither)
            await self._shared(lambda: self.store.first_byte(lease))
        return seconds

    async def release(
        self,
        lease: Lease,
        *,
        learned: Learned | None = None,
        affinity: str | None = None,
        quota: QuotaTicket | None = None,
        tokens: int = 0,
        charge: Charge | None = None,
    ) -> None:
        lease = self._leases.pop(lease.member, lease)
        freed = self.local.give_back(lease, learned, None if self.up else charge)
        if affinity is not None:
            self.local.affinities.put(affinity, lease.pod)
        ticket = self._tickets.pop(quota.member, quota) if quota is not None else None
        if ticket is not None:
            self.local.return_ticket(ticket, tokens)
        shared_ticket = ticket if ticket is not None and ticket.shared else None
        if lease.shared:

            async def give_back() -> None:
                await self.store.release(
                    lease,
                    learned=learned,
                    affinity=affinity,
                    quota=shared_ticket,
                    tokens=tokens,
                    charge=charge,
                )

            ok, _ = await self._shared(give_back)
            if ok:
                return  # the reply (and the events channel everywhere) signal the freed slot
            lost = entries_of(self.store.keys, [lease], [shared_ticket] if shared_ticket else [])
            self._given_back.update(lost)
        else:
            # A lease taken while the store was down: only the rest may be shared.
            if shared_ticket is not None:
                await self.finish_quota(shared_ticket, tokens, local_done=True)
            if learned is not None:
                await self._shared(lambda: self.store.learn(lease.model, learned))
            if affinity is not None:
                await self._shared(lambda: self.store.remember(affinity, lease.pod))
        self.local.signal.notify(freed)

    # ------------------------------------------------------------ the scheduler's board
    async def post_waiter(self, waiter: Waiter) -> None:
        await self.local.post_waiter(waiter)  # the shadow, for a switch to local state
        await self._shared(lambda: self.store.post_waiter(waiter))

    async def drop_waiter(self, request_id: str) -> None:
        await self.local.drop_waiter(request_id)
        await self._shared(lambda: self.store.drop_waiter(request_id))

    async def reclaim(self, reservation: Reservation) -> bool:
        ok, done = await self._shared(lambda: self.store.reclaim(reservation))
        if ok:
            return bool(done)
        return await self.local.reclaim(reservation)

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        unsubscribers = (self.store.on_preempt(listener), self.local.on_preempt(listener))

        def unsubscribe() -> None:
            for off in unsubscribers:
                off()

        return unsubscribe

    def _own_holders(self) -> list[SlotHolder]:
        """The holders of this replica's shared leases, as local state shadows them."""
        return [
            h
            for h in self.local.book.holders_of(self.local.replica)
            if (lease := self._leases.get(h.member)) is not None and lease.shared
        ]

    def _own_waiters(self) -> list[Waiter]:
        return list(self.local.board().waiters.values())

    # ------------------------------------------------------------ loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        ok, got = await self._shared(lambda: self.store.lock_load(model, owner, ttl))
        if ok:
            return bool(got)
        return await self.local.lock_load(model, owner, ttl)

    async def unlock_load(self, model: str, owner: str) -> None:
        await self.local.unlock_load(model, owner)
        await self._shared(lambda: self.store.unlock_load(model, owner))

    async def refresh(self) -> None:
        await self._shared(self.store.refresh)

    # ------------------------------------------------------------ learning and memory
    async def learn(self, model: str, learned: Learned) -> None:
        await self.local.learn(model, learned)
        await self._shared(lambda: self.store.learn(model, learned))

    async def penalise(self, pod: str, seconds: float) -> None:
        await self.local.penalise(pod, seconds)
        await self._shared(lambda: self.store.penalise(pod, seconds))

    async def clear_penalty(self, pod: str) -> None:
        await self.local.clear_penalty(pod)
        if self.up and self.store.pod_penalised(pod):
            await self._shared(lambda: self.store.clear_penalty(pod))

    async def remember(self, key: str, pod: str) -> None:
        await self.local.remember(key, pod)
        await self._shared(lambda: self.store.remember(key, pod))

    # ------------------------------------------------------------ quotas
    async def admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        ok, verdict = await self._shared(lambda: self.store.admit(key, request_id))
        if ok and verdict is not None:
            if verdict.ticket is not None:
                self.local.shadow_ticket(key)
                self._tickets[verdict.ticket.member] = verdict.ticket
            return verdict
        verdict = await self.local.admit(key, request_id)
        if verdict.ticket is not None:
            self._tickets[verdict.ticket.member] = verdict.ticket
        return verdict

    async def finish_quota(
        self, ticket: QuotaTicket, tokens: int = 0, *, local_done: bool = False
    ) -> None:
        ticket = self._tickets.pop(ticket.member, ticket)
        if not local_done:
            self.local.return_ticket(ticket, tokens)
        if ticket.shared:
            ok, _ = await self._shared(lambda: self.store.finish_quota(ticket, tokens))
            if not ok:
                self._given_back.update(entries_of(self.store.keys, [], [ticket]))

    # ------------------------------------------------------------ slot-freed signal
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]:
        return self.local.signal.subscribe(listener)

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None:
        return await self.local.signal.wait(model, timeout)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Try the store once (bounded by the op timeout), then supervise in the background."""
        self.observer.state_up(False)
        try:
            await self._connect()
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            self.log.warning(
                "%s: %s: serving with local state until it answers: %s",
                EVENT_UNREACHABLE,
                self.store.address.redacted(),
                exc,
            )
        self._tasks = [
            asyncio.create_task(self._supervise(), name="shared-state-supervisor"),
            asyncio.create_task(self._periodic(), name="shared-state-periodic"),
        ]

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._listener = [], None
        if self.up:
            # Give the slots back now rather than after the TTL (a clean shutdown).
            with contextlib.suppress(StoreUnavailable):
                await self.store.remove(
                    entries_of(self.store.keys, self._leases.values(), self._tickets.values())
                )
                await self.store.drop_waiters(w.request_id for w in self._own_waiters())
        self.up = False
        await self.store.close()

    async def _connect(self) -> None:
        """Connect, re-register what this replica holds, subscribe, refresh; then share."""
        await self.store.connect()
        plan = plan_resync(self.store.keys, self._leases, self._tickets, self._given_back)
        await self.store.remove(plan.remove)
        await self.store.renew(plan.register)
        self._given_back.clear()
        for member, lease in list(self._leases.items()):
            self._leases[member] = dataclasses.replace(lease, shared=True)
        for member, ticket in list(self._tickets.items()):
            self._tickets[member] = dataclasses.replace(ticket, shared=True)
        # The board's part: counters at least as far as this replica saw them (a store that
        # restarted empty gets them back; one that lived on keeps its higher values).
        await self.store.reassert(
            self._own_holders(), self._own_waiters(), self.local.book.board().counters
        )
        subscribed = asyncio.Event()
        listener = asyncio.create_task(self._listen(subscribed), name="shared-state-events")
        try:
            async with asyncio.timeout(self.store.op_timeout * 4):
                await subscribed.wait()
            await self.store.refresh()
        except (StoreUnavailable, TimeoutError) as exc:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            raise StoreUnavailable(f"events channel: {exc or 'no subscription'}") from exc
        self._listener = listener
        self.up = True
        self._ok()
        self.since = self.local.clock()
        self.observer.state_up(True)
        self.log.info(
            "%s: %s (re-registered %d leases/tickets, removed %d)",
            EVENT_UP,
            self.store.address.redacted(),
            len(plan.register),
            len(plan.remove),
        )

    async def _listen(self, subscribed: asyncio.Event) -> None:
        try:
            await self.store.listen(subscribed)
        except StoreUnavailable as exc:
            if subscribed.is_set():
                self._down(exc)
            else:
                raise

    async def _supervise(self) -> None:
        """Reconnect while down; while up, ping when nothing else proved the store alive."""
        while True:
            if not self.up:
                try:
                    await self._connect()
                except StoreUnavailable as exc:
                    self.last_error = str(exc)
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.reconnect_interval):
                            await self._wake.wait()
                continue
            await asyncio.sleep(self.health_interval)
            if self.up and self.local.clock() - self._last_ok >= self.health_interval:
                await self._shared(self.store.ping)

    async def _renew(self, entries: list[Entry]) -> None:
        async def renew() -> None:
            await self.store.renew(entries)
            # after the leases: a holder document is kept only while its lease lives
            await self.store.reassert(self._own_holders(), self._own_waiters())

        await self._shared(renew)

    async def _periodic(self) -> None:
        """Refresh the mirror every ``refresh_interval``; renew held leases every renew."""
        next_renew = self.local.clock() + self.renew_interval
        while True:
            await asyncio.sleep(self.refresh_interval)
            if not self.up:
                continue
            await self._shared(self.store.refresh)
            if self.local.clock() >= next_renew:
                next_renew = self.local.clock() + self.renew_interval
                entries = entries_of(
                    self.store.keys,
                    [x for x in self._leases.values() if x.shared],
                    [t for t in self._tickets.values() if t.shared],
                )
                await self._renew(entries)
