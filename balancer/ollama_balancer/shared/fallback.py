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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared.degrade import Degrade, LastSeen, degraded_view
from ..core.shared.local import LocalState
from ..core.shared.mirror import LOADED_MEMORY
from ..core.shared.model import Grant, Learned, Lease, QuotaTicket, QuotaVerdict, SlotFreed
from ..core.shared.protocol import StoreUnavailable
from ..core.shared.resync import Entry, entries_of, plan_reassert, plan_resync, store_lost
from .store import RedisState

__all__ = ["FallbackState", "SharedObserver"]

T = TypeVar("T")

EVENT_UP = "shared_state_up"
EVENT_DOWN = "shared_state_down"
EVENT_UNREACHABLE = "shared_state_unreachable"
EVENT_REBUILT = "shared_state_rebuilt"


class SharedObserver(Protocol):
    """What the wrapper reports (the Prometheus side is :mod:`.metrics`)."""

    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...
    def reconnected(self, count: int) -> None: ...
    def rebuilt(self) -> None: ...


class _Quiet:
    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...
    def reconnected(self, count: int) -> None: ...
    def rebuilt(self) -> None: ...


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
        degrade: Degrade = Degrade.REMEMBER,
        degraded_hold: float = 2.0,
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
        self.degrade = degrade
        self.degraded_hold = degraded_hold
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
        self._reconnects_seen = 0
        #: Store operations whose caller was cancelled, finishing (and undone) on their own.
        self._orphans: set[asyncio.Future[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Set while the store serves (a held cold-load decision waits for it).
        self._back = asyncio.Event()
        #: The fleet as the store last showed it (kept from the moment it was lost).
        self._last: LastSeen | None = None
        self._degraded: tuple[Occupancy, int, Occupancy] | None = None
        #: Members of this replica's leases whose first byte came.
        self._answered: set[str] = set()
        #: The store's epoch as this replica last saw it (None: never connected).
        self._epoch: str | None = None
        self.rebuilds = 0

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
            "degrade": str(self.degrade),
            "rebuilds": self.rebuilds,
        }

    def occupancy(self) -> Occupancy:
        if self.up and self.store.mirror.synced:
            return self.store.occupancy()
        local = self.local.occupancy()
        if self.degrade is Degrade.ALONE or self._last is None:
            return local
        # Rebuilt when the ledger changes, and a few times a second as memories age.
        now = self.local.clock()
        tick = int(now * 4)
        cached = self._degraded
        if cached is not None and cached[0] is local and cached[1] == tick:
            return cached[2]
        view = degraded_view(local, self._last, now, lease_ttl=self.store.lease_ttl)
        self._degraded = (local, tick, view)
        return view

    def affinity(self, key: str) -> str | None:
        return self.local.affinity(key)

    def _down(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if not self.up:
            return
        self.up = False
        self._back.clear()
        self.fallbacks += 1
        self.since = self.local.clock()
        if self.store.mirror.synced:
            self._last = LastSeen(
                fleet=self.store.mirror.occupancy(),
                own=self.local.occupancy(),
                at=self.since,
                replica=self.store.replica,
            )
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
        again = self.store.reconnects - self._reconnects_seen
        if again:
            self._reconnects_seen = self.store.reconnects
            self.observer.reconnected(again)

    async def _detached(
        self,
        op: Coroutine[Any, Any, T],
        undo: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Run a store operation to its end, whatever becomes of the caller.

        redis-py drops a connection whose command is cancelled before its reply was read
        (it cannot tell where the reply would have stopped), so a client that leaves
        mid-operation would cost a reconnect, and a lease granted to a caller that is gone
        would hold its slot until its TTL.  The operation runs as its own task: a cancelled
        caller stops waiting, the operation completes, and ``undo`` gives back what the
        caller never received (a lease, a quota ticket, a load lock)."""
        task = asyncio.ensure_future(op)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._orphans.add(task)
            task.add_done_callback(functools.partial(self._orphaned, undo=undo))
            raise

    def _orphaned(
        self, task: asyncio.Future[Any], undo: Callable[[Any], Awaitable[None]] | None
    ) -> None:
        self._orphans.discard(task)
        if task.cancelled() or task.exception() is not None or undo is None:
            return
        follow = asyncio.ensure_future(undo(task.result()))
        self._orphans.add(follow)
        follow.add_done_callback(self._orphans.discard)

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
    # Every operation that may talk to the store runs detached from its caller while the
    # store serves (see _detached); while it does not, local state answers at once.
    async def acquire(
        self,
        pod: str,
        model: str,
        *,
        slots: int,
        request_id: str,
        cold: bool = False,
        overflow: bool = False,
    ) -> Grant:
        if not self.up:
            return self._take_locally(pod, model, slots, request_id, cold, overflow)
        return await self._detached(
            self._acquire(pod, model, slots, request_id, cold, overflow), self._give_back_grant
        )

    async def _acquire(
        self, pod: str, model: str, slots: int, request_id: str, cold: bool, overflow: bool
    ) -> Grant:
        t0 = self.timer()
        ok, grant = await self._shared(
            lambda: self.store.acquire(
                pod, model, slots=slots, request_id=request_id, cold=cold, overflow=overflow
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
                )
                self._leases[lease.member] = lease
            return grant
        return self._take_locally(pod, model, slots, request_id, cold, overflow)

    def _take_locally(
        self, pod: str, model: str, slots: int, request_id: str, cold: bool, overflow: bool
    ) -> Grant:
        grant = self.local.take(
            pod, model, slots=slots, request_id=request_id, cold=cold, overflow=overflow
        )
        if grant.lease is not None:
            self._leases[grant.lease.member] = grant.lease
        return grant

    async def _give_back_grant(self, grant: Grant) -> None:
        if grant.lease is not None:
            await self.release(grant.lease)

    def _current(self, lease: Lease) -> Lease:
        # Re-registration after an outage turns a local lease into a shared one.
        return self._leases.get(lease.member, lease)

    async def first_byte(self, lease: Lease) -> float | None:
        lease = self._current(lease)
        if lease.member in self._leases:
            self._answered.add(lease.member)
        seconds = await self.local.first_byte(lease)
        if lease.shared and lease.loads and self.up:
            await self._detached(self._shared(lambda: self.store.first_byte(lease)))
        return seconds

    async def release(
        self,
        lease: Lease,
        *,
        learned: Learned | None = None,
        affinity: str | None = None,
        quota: QuotaTicket | None = None,
        tokens: int = 0,
    ) -> None:
        lease = self._leases.pop(lease.member, lease)
        self._answered.discard(lease.member)
        freed = self.local.give_back(lease, learned)
        if affinity is not None:
            self.local.affinities.put(affinity, lease.pod)
        ticket = self._tickets.pop(quota.member, quota) if quota is not None else None
        if ticket is not None:
            self.local.return_ticket(ticket, tokens)
        shared_ticket = ticket if ticket is not None and ticket.shared else None
        if lease.shared:

            async def give_back() -> None:
                await self.store.release(
                    lease, learned=learned, affinity=affinity, quota=shared_ticket, tokens=tokens
                )

            if self.up:
                ok, _ = await self._detached(self._shared(give_back))
                if ok:
                    return  # the reply (and the events channel everywhere) signal the freed slot
            lost = entries_of(self.store.keys, [lease], [shared_ticket] if shared_ticket else [])
            self._given_back.update(lost)
        else:
            # A lease taken while the store was down: only the rest may be shared.
            if shared_ticket is not None:
                await self.finish_quota(shared_ticket, tokens, local_done=True)
            if learned is not None:
                await self._in_store(lambda: self.store.learn(lease.model, learned))
            if affinity is not None:
                await self._in_store(lambda: self.store.remember(affinity, lease.pod))
        self.local.signal.notify(freed)

    async def _in_store(self, op: Callable[[], Awaitable[Any]]) -> None:
        """``op`` on the store, detached from the caller, if the store serves."""
        if self.up:
            await self._detached(self._shared(op))

    # ------------------------------------------------------------ loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        if not self.up and self.degrade is Degrade.HOLD and self._last is not None:
            # A cold-load decision while the store is away: give it a moment to come
            # back (a restart, a failover) and decide with the whole fleet's view.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.degraded_hold):
                    await self._back.wait()
        if self.up:

            async def unlock(got: bool) -> None:
                if got:
                    await self.unlock_load(model, owner)

            ok, got = await self._detached(
                self._shared(lambda: self.store.lock_load(model, owner, ttl)),
                lambda result: unlock(bool(result[1])),
            )
            if ok:
                return bool(got)
        return await self.local.lock_load(model, owner, ttl)

    async def unlock_load(self, model: str, owner: str) -> None:
        await self.local.unlock_load(model, owner)
        await self._in_store(lambda: self.store.unlock_load(model, owner))

    async def refresh(self) -> None:
        await self._in_store(self.store.refresh)

    # ------------------------------------------------------------ learning and memory
    async def learn(self, model: str, learned: Learned) -> None:
        await self.local.learn(model, learned)
        await self._in_store(lambda: self.store.learn(model, learned))

    async def penalise(self, pod: str, seconds: float) -> None:
        await self.local.penalise(pod, seconds)
        await self._in_store(lambda: self.store.penalise(pod, seconds))

    async def clear_penalty(self, pod: str) -> None:
        await self.local.clear_penalty(pod)
        if self.up and self.store.pod_penalised(pod):
            await self._in_store(lambda: self.store.clear_penalty(pod))

    async def remember(self, key: str, pod: str) -> None:
        await self.local.remember(key, pod)
        await self._in_store(lambda: self.store.remember(key, pod))

    # ------------------------------------------------------------ quotas
    async def admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        if self.up:

            async def give_back(verdict: QuotaVerdict) -> None:
                if verdict.ticket is not None:
                    await self.finish_quota(verdict.ticket)

            return await self._detached(self._admit(key, request_id), give_back)
        return await self._admit_locally(key, request_id)

    async def _admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        ok, verdict = await self._shared(lambda: self.store.admit(key, request_id))
        if ok and verdict is not None:
            if verdict.ticket is not None:
                self.local.shadow_ticket(key)
                self._tickets[verdict.ticket.member] = verdict.ticket
            return verdict
        return await self._admit_locally(key, request_id)

    async def _admit_locally(self, key: ApiKey, request_id: str) -> QuotaVerdict:
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
            ok = False
            if self.up:
                ok, _ = await self._detached(
                    self._shared(lambda: self.store.finish_quota(ticket, tokens))
                )
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
        while self._orphans:  # operations of cancelled callers (and their undoing) end first
            await asyncio.gather(*self._orphans, return_exceptions=True)
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
        self.up = False
        await self.store.close()

    async def _connect(self) -> None:
        """Connect, re-register what this replica holds (and, into a store that came back
        empty, what it knows: :func:`plan_reassert`), subscribe, refresh; then share."""
        await self.store.connect()
        plan = plan_resync(self.store.keys, self._leases, self._tickets, self._given_back)
        await self.store.remove(plan.remove)
        await self.store.renew(plan.register)
        await self._reassert(len(plan.register))
        self._given_back.clear()
        for member, lease in list(self._leases.items()):
            self._leases[member] = dataclasses.replace(lease, shared=True)
        for member, ticket in list(self._tickets.items()):
            self._tickets[member] = dataclasses.replace(ticket, shared=True)
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
        self._back.set()
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

    async def _reassert(self, leases: int) -> None:
        """Write back the loads, finished loads and learned times the store lacks; if it
        lost its contents since this replica last saw it, say so (log, metric, status)."""
        plan = plan_reassert(
            self._leases,
            self._answered,
            self.local.occupancy(),
            self._last,
            self.local.clock(),
            loaded_memory=LOADED_MEMORY,
        )
        done = await self.store.reassert(plan, candidate=secrets.token_hex(8))
        for member in plan.owners:
            lease = self._leases.get(member)
            if lease is not None:
                # Its first byte now ends the load it vouched for (and its early
                # release aborts it), as the lost owner's would have.
                self._leases[member] = dataclasses.replace(lease, loads=True)
        lost = store_lost(self._epoch, None if done.created else done.epoch)
        self._epoch = done.epoch
        if lost:
            self.rebuilds += 1
            self.observer.rebuilt()
            self.log.warning(
                "%s: the store came back without its contents; re-asserted %d leases/tickets, "
                "%d loads in progress, %d finished loads, %d learned times",
                EVENT_REBUILT,
                leases,
                done.loads,
                done.loaded,
                done.learned,
            )

    async def _check_epoch(self) -> None:
        """Mid-run, the store can lose its contents without dropping a connection (a
        flush, a failover that kept the address): the epoch read with each refresh says
        so, and everything is written back at once."""
        if not store_lost(self._epoch, self.store.epoch):
            return
        self.store.mirror.reset()  # its sequence numbers belong to the lost store
        plan = plan_resync(self.store.keys, self._leases, self._tickets, ())
        await self.store.renew(plan.register)
        await self._reassert(len(plan.register))
        await self.store.refresh()

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
        await self._shared(lambda: self.store.renew(entries))

    async def _periodic(self) -> None:
        """Refresh the mirror every ``refresh_interval``; renew held leases every renew."""
        next_renew = self.local.clock() + self.renew_interval
        while True:
            await asyncio.sleep(self.refresh_interval)
            if not self.up:
                continue
            await self._shared(self.store.refresh)
            await self._shared(self._check_epoch)
            if self.local.clock() >= next_renew:
                next_renew = self.local.clock() + self.renew_interval
                entries = entries_of(
                    self.store.keys,
                    [x for x in self._leases.values() if x.shared],
                    [t for t in self._tickets.values() if t.shared],
                )
                await self._renew(entries)
