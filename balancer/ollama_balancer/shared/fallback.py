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
:mod:`.local`), so the switch starts from this replica's true counts.  The link to
the store — up or down, reconnecting, renewing, resyncing — is :mod:`.link`'s.

While the store serves, every operation runs detached from its caller (:mod:`.detach`):
a client that leaves costs no store connection and keeps nothing.  While it does not,
the occupancy routing reads is the degrade policy's (:mod:`~ollama_balancer.core.shared.degrade`):
this replica's counts, and by default the fleet as the store last showed it.

The scheduler's board follows the same rule: :meth:`FallbackState.board` is the
store's (fleet-wide) while it serves, else local state's, which shadows this
replica's own holders and waiting requests all along (the link re-asserts them, and
hands the fair-share counters over both ways).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared.board import Board, Charge, Reservation, SlotHolder, Waiter
from ..core.shared.degrade import Degrade, DegradedViews
from ..core.shared.local import LocalState
from ..core.shared.model import Grant, Learned, Lease, QuotaTicket, QuotaVerdict, SlotFreed
from ..core.shared.resync import entries_of
from .detach import Detached
from .link import Held, SharedObserver, StoreLink
from .store import RedisState

__all__ = ["FallbackState", "SharedObserver"]


@dataclass(frozen=True, slots=True)
class _How:
    """What an acquire asks for, besides its pod and model."""

    slots: int
    request_id: str
    cold: bool
    overflow: bool
    holder: SlotHolder | None
    charge: Charge | None


class FallbackState:
    """Every operation on the store while the link is up, on local state when it is not."""

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
        self.timer = timer
        self.degraded_hold = degraded_hold
        self.detached = Detached()
        self.views = DegradedViews(degrade, lease_ttl=store.lease_ttl)
        # The store and the local state share one signal and one affinity map, so a
        # waiter or a lookup never cares which of them is serving.
        store.signal = local.signal
        store.affinities = local.affinities
        self.held = Held()
        self.link = StoreLink(
            store,
            local,
            self.held,
            renew_interval=renew_interval,
            refresh_interval=refresh_interval,
            health_interval=health_interval,
            reconnect_interval=reconnect_interval,
            observer=observer,
            log=log,
        )

    # ------------------------------------------------------------ state
    @property
    def up(self) -> bool:
        return self.link.up

    @property
    def observer(self) -> SharedObserver:
        return self.link.observer

    @observer.setter
    def observer(self, observer: SharedObserver) -> None:
        self.link.observer = observer

    def own_leases(self) -> list[Lease]:
        """Leases this replica holds now (for the held-leases gauge)."""
        return list(self.held.leases.values())

    def status(self) -> dict[str, object]:
        return {
            **self.link.status(),
            "leases_held": len(self.held.leases),
            "degrade": str(self.views.policy),
        }

    def occupancy(self) -> Occupancy:
        if self.link.up and self.store.mirror.synced:
            return self.store.occupancy()
        return self.views.view(self.local.occupancy(), self.link.memory.last, self.local.clock())

    def affinity(self, key: str) -> str | None:
        return self.local.affinity(key)

    def board(self) -> Board:
        if self.link.up and self.store.mirror.synced:
            return self.store.board()
        return self.local.board()

    # ------------------------------------------------------------ slots
    # Every operation that may talk to the store runs detached from its caller while the
    # store serves; while it does not, local state answers at once.
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
        how = _How(slots, request_id, cold, overflow, holder, charge)
        if not self.link.up:
            return self._take_locally(pod, model, how)
        return await self.detached.run(self._acquire(pod, model, how), self._give_back)

    async def _acquire(self, pod: str, model: str, how: _How) -> Grant:
        t0 = self.timer()
        ok, grant = await self.link.run(
            lambda: self.store.acquire(
                pod,
                model,
                slots=how.slots,
                request_id=how.request_id,
                cold=how.cold,
                overflow=how.overflow,
                holder=how.holder,
                charge=how.charge,
            )
        )
        if ok and grant is not None:
            self.link.observer.acquire_seconds(self.timer() - t0, grant.lease is not None)
            lease = grant.lease
            if lease is not None:
                self.local.take(
                    pod,
                    model,
                    slots=how.slots,
                    request_id=how.request_id,
                    cold=lease.loads,
                    overflow=True,
                    member=lease.member,
                    holder=how.holder,  # the shadow: the counters are the store's meanwhile
                )
                self.held.leases[lease.member] = lease
            else:
                self.local.book.unwait(how.request_id)  # the shadow of the store's
            return grant
        return self._take_locally(pod, model, how)

    def _take_locally(self, pod: str, model: str, how: _How) -> Grant:
        grant = self.local.take(
            pod,
            model,
            slots=how.slots,
            request_id=how.request_id,
            cold=how.cold,
            overflow=how.overflow,
            holder=how.holder,
            charge=how.charge,
        )
        if grant.lease is not None:
            self.held.leases[grant.lease.member] = grant.lease
        return grant

    async def _give_back(self, grant: Grant) -> None:
        if grant.lease is not None:  # granted to a caller that is gone
            await self.release(grant.lease)

    async def _in_store(self, op: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """``op`` on the store, detached from the caller, if the store serves."""
        if not self.link.up:
            return False, None
        return await self.detached.run(self.link.run(op))

    def _current(self, lease: Lease) -> Lease:
        # Re-registration after an outage turns a local lease into a shared one.
        return self.held.leases.get(lease.member, lease)

    async def first_byte(self, lease: Lease) -> float | None:
        lease = self._current(lease)
        if lease.member in self.held.leases:
            self.held.answered.add(lease.member)
        seconds = await self.local.first_byte(lease)
        if lease.shared:  # a load ends, the board notes it (no round trip when neither)
            ok, _ = await self._in_store(lambda: self.store.first_byte(lease))
            if not ok and lease.loads:  # the store still lists the load: end it when back
                self.held.settle[lease.member] = (lease, True)
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
        lease = self.held.leases.pop(lease.member, lease)
        self.held.answered.discard(lease.member)
        # while the store serves, the fair-share counters are its: charge there only
        freed = self.local.give_back(lease, learned, None if self.link.up else charge)
        if affinity is not None:
            self.local.affinities.put(affinity, lease.pod)
        ticket = self.held.tickets.pop(quota.member, quota) if quota is not None else None
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

            ok, _ = await self._in_store(give_back)
            if ok:
                return  # the reply (and the events channel everywhere) signal the freed slot
            lost = entries_of(self.store.keys, [lease], [shared_ticket] if shared_ticket else [])
            self.held.given_back.update(lost)
            if lease.loads:  # a load it started and left before its first byte: abandoned
                self.held.settle.setdefault(lease.member, (lease, False))
        else:
            # A lease taken while the store was down: only the rest may be shared.
            if shared_ticket is not None:
                await self.finish_quota(shared_ticket, tokens, local_done=True)
            if learned is not None:
                await self._in_store(lambda: self.store.learn(lease.model, learned))
            if affinity is not None:
                await self._in_store(lambda: self.store.remember(affinity, lease.pod))
        self.local.signal.notify(freed)

    # ------------------------------------------------------------ the scheduler's board
    async def post_waiter(self, waiter: Waiter) -> None:
        await self.local.post_waiter(waiter)  # the shadow, for a switch to local state
        await self._in_store(lambda: self.store.boards.post_waiter(waiter))

    async def drop_waiter(self, request_id: str) -> None:
        await self.local.drop_waiter(request_id)
        await self._in_store(lambda: self.store.boards.drop_waiter(request_id))

    async def reclaim(self, reservation: Reservation) -> bool:
        ok, done = await self._in_store(lambda: self.store.boards.reclaim(reservation))
        if ok:
            return bool(done)
        return await self.local.reclaim(reservation)

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        offs = (self.store.boards.on_preempt(listener), self.local.on_preempt(listener))

        def unsubscribe() -> None:
            for off in offs:
                off()

        return unsubscribe

    # ------------------------------------------------------------ loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        if not self.link.up and self.views.policy is Degrade.HOLD and self.link.memory.last:
            # A cold-load decision while the store is away: give it a moment to come
            # back (a restart, a failover) and decide with the whole fleet's view.
            await self.link.wait_back(self.degraded_hold)
        if self.link.up:

            async def unlock(result: tuple[bool, Any]) -> None:
                if result[0] and result[1]:
                    await self.unlock_load(model, owner)

            ok, got = await self.detached.run(
                self.link.run(lambda: self.store.lock_load(model, owner, ttl)), unlock
            )
            if ok:
                return bool(got)
        return await self.local.lock_load(model, owner, ttl)

    async def unlock_load(self, model: str, owner: str) -> None:
        await self.local.unlock_load(model, owner)
        await self._in_store(lambda: self.store.unlock_load(model, owner))

    async def forget_loaded(self, pod: str, model: str) -> None:
        await self.local.forget_loaded(pod, model)
        await self._in_store(lambda: self.store.forget_loaded(pod, model))

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
        if self.link.up and self.store.pod_penalised(pod):
            await self._in_store(lambda: self.store.clear_penalty(pod))

    async def remember(self, key: str, pod: str) -> None:
        await self.local.remember(key, pod)
        await self._in_store(lambda: self.store.remember(key, pod))

    # ------------------------------------------------------------ quotas
    async def admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        if not self.link.up:
            return await self._admit_locally(key, request_id)

        async def give_back(verdict: QuotaVerdict) -> None:
            if verdict.ticket is not None:
                await self.finish_quota(verdict.ticket)

        return await self.detached.run(self._admit(key, request_id), give_back)

    async def _admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        ok, verdict = await self.link.run(lambda: self.store.admit(key, request_id))
        if ok and verdict is not None:
            if verdict.ticket is not None:
                self.local.shadow_ticket(key)
                self.held.tickets[verdict.ticket.member] = verdict.ticket
            return verdict
        return await self._admit_locally(key, request_id)

    async def _admit_locally(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        verdict = await self.local.admit(key, request_id)
        if verdict.ticket is not None:
            self.held.tickets[verdict.ticket.member] = verdict.ticket
        return verdict

    async def finish_quota(
        self, ticket: QuotaTicket, tokens: int = 0, *, local_done: bool = False
    ) -> None:
        ticket = self.held.tickets.pop(ticket.member, ticket)
        if not local_done:
            self.local.return_ticket(ticket, tokens)
        if ticket.shared:
            ok, _ = await self._in_store(lambda: self.store.finish_quota(ticket, tokens))
            if not ok:
                self.held.given_back.update(entries_of(self.store.keys, [], [ticket]))

    # ------------------------------------------------------------ slot-freed signal
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]:
        return self.local.signal.subscribe(listener)

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None:
        return await self.local.signal.wait(model, timeout)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Try the store once (bounded by the op timeout), then supervise in the background."""
        await self.link.start()

    async def close(self) -> None:
        await self.detached.drain()  # cancelled callers' operations (and their undoing) end
        await self.link.close()
