"""Per-replica state behind the shared interface: today's semantics on the :class:`Ledger`.

Serves alone when ``shared_state`` is empty (single replica only) and as the
fallback when the store is unreachable.  While the store serves, the fallback
wrapper still *shadows* this replica's own leases and quota tickets here, so a
switch to local state mid-run starts from this replica's true counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..auth import ApiKey, KeyState
from ..ledger import Ledger
from ..occupancy import Occupancy
from .board import Board, BoardBook, Charge, Reservation, SlotHolder, Waiter
from .model import (
    Grant,
    Learned,
    Lease,
    QuotaTicket,
    QuotaVerdict,
    SlotFreed,
    member_of,
)
from .signals import AffinityMap, FreedSignal

__all__ = ["LocalState"]


class LocalState:
    def __init__(
        self,
        ledger: Ledger | None = None,
        *,
        replica: str = "local",
        clock: Callable[[], float] = time.monotonic,
        signal: FreedSignal | None = None,
        affinity: AffinityMap | None = None,
        quotas: dict[str, KeyState] | None = None,
    ) -> None:
        self.ledger = ledger or Ledger()
        self.replica = replica
        self.clock = clock
        self.signal = signal or FreedSignal()
        self.affinities = affinity or AffinityMap(clock)
        #: Per-key limits state (the keys file's reload prunes removed keys from it).
        self.quotas: dict[str, KeyState] = {} if quotas is None else quotas
        self._locks: dict[str, tuple[str, float]] = {}
        #: The scheduler's board: this replica's leases, waiting requests and counters.
        self.book = BoardBook()
        self._preempt: list[Callable[[str], None]] = []

    # ---- reads
    def occupancy(self) -> Occupancy:
        return self.ledger.occupancy()

    def affinity(self, key: str) -> str | None:
        return self.affinities.get(key)

    def board(self) -> Board:
        return self.book.board(self.clock())

    def status(self) -> dict[str, object]:
        return {"mode": "local", "replica": self.replica}

    # ---- slots
    def take(
        self,
        pod: str,
        model: str,
        *,
        slots: int,
        request_id: str,
        cold: bool = False,
        overflow: bool = False,
        member: str | None = None,
        holder: SlotHolder | None = None,
        charge: Charge | None = None,
    ) -> Grant:
        """Synchronous acquire (the fallback wrapper shadows store leases with it)."""
        held = self.ledger.inflight(pod, model)
        board = self.book.board(self.clock())
        promised = board.promised(pod, model, besides=request_id)
        if (
            held + promised >= slots
            and not overflow
            and not board.reserved_for(request_id, pod, model)
        ):
            self.book.unwait(request_id)  # a bind that lost its slot queues again
            return Grant(None, held)
        member = member or member_of(self.replica, request_id)
        now = self.clock()
        self.ledger.begin(pod, model, cold=cold, now=now, request_id=member)
        record = self.ledger.loading(pod, model)
        loads = cold and record is not None and record.request_id == member
        if holder is not None:
            self.book.hold(
                SlotHolder(
                    member=member,
                    pod=pod,
                    model=model,
                    replica=self.replica,
                    request_id=request_id,
                    cls=holder.cls,
                    tenant=holder.tenant,
                    weight=holder.weight,
                    started=now,
                    expected_seconds=holder.expected_seconds,
                    preemptions=holder.preemptions,
                    resumable=holder.resumable,
                )
            )
        else:
            self.book.unwait(request_id)
            self.book.unreserve(request_id)  # its promised seat is used, board or not
        if charge is not None:
            self.book.charge(charge)
        return Grant(Lease(pod, model, member, slots, request_id, loads=loads), held + 1)

    def give_back(
        self, lease: Lease, learned: Learned | None = None, charge: Charge | None = None
    ) -> SlotFreed:
        self.ledger.end(lease.pod, lease.model, request_id=lease.member)
        self.book.release(lease.member)
        if charge is not None:
            self.book.charge(charge)
        if learned is not None:
            self._learn(lease.model, learned)
        return SlotFreed(lease.pod, lease.model, self.ledger.inflight(*lease.key), lease.slots)

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
        return self.take(
            pod,
            model,
            slots=slots,
            request_id=request_id,
            cold=cold,
            overflow=overflow,
            holder=holder,
            charge=charge,
        )

    async def first_byte(self, lease: Lease) -> float | None:
        now = self.clock()
        self.book.first_byte(lease.member, now)
        return self.ledger.first_byte(lease.pod, lease.model, now=now, request_id=lease.member)

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
        freed = self.give_back(lease, learned, charge)
        if affinity is not None:
            self.affinities.put(affinity, lease.pod)
        if quota is not None:
            self.return_ticket(quota, tokens)
        self.signal.notify(freed)

    # ---- the scheduler's waiting list and reclaims
    async def post_waiter(self, waiter: Waiter) -> None:
        self.book.wait(waiter)

    async def drop_waiter(self, request_id: str) -> None:
        self.book.unwait(request_id)
        promise = self.book.unreserve(request_id)
        if promise is not None:  # the promised seat is anyone's again
            held = self.ledger.inflight(promise.pod, promise.model)
            self.signal.notify(SlotFreed(promise.pod, promise.model, held, 0))

    async def reclaim(self, reservation: Reservation) -> bool:
        board = self.book.board(self.clock())
        victim = board.holders.get(reservation.victim)
        if victim is None or not self.book.reclaim(reservation):
            return False
        for listener in list(self._preempt):
            listener(reservation.victim)
        return True

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._preempt.append(listener)
        return lambda: self._preempt.remove(listener) if listener in self._preempt else None

    # ---- loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        now = self.clock()
        held = self._locks.get(model)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._locks[model] = (owner, now + ttl)
        return True

    async def unlock_load(self, model: str, owner: str) -> None:
        held = self._locks.get(model)
        if held is not None and held[0] == owner:
            del self._locks[model]

    async def forget_loaded(self, pod: str, model: str) -> None:
        self.ledger.forget_loaded(pod, model)

    async def refresh(self) -> None:
        return None  # the ledger is always current

    # ---- learning and memory
    def _learn(self, model: str, learned: Learned) -> None:
        if learned.load_seconds is not None:
            self.ledger.learn_load(model, learned.load_seconds)
        if learned.service_seconds is not None:
            self.ledger.learn_service(model, learned.service_seconds)

    async def learn(self, model: str, learned: Learned) -> None:
        self._learn(model, learned)

    async def penalise(self, pod: str, seconds: float) -> None:
        self.ledger.penalise(pod, self.clock() + seconds)

    async def clear_penalty(self, pod: str) -> None:
        self.ledger.clear_penalty(pod)

    async def remember(self, key: str, pod: str) -> None:
        self.affinities.put(key, pod)

    # ---- quotas
    def key_state(self, key: ApiKey) -> KeyState:
        st = self.quotas.get(key.name)
        if st is None:
            st = self.quotas[key.name] = KeyState.for_key(key)
        return st

    async def admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        refused = self.key_state(key).admit(key, self.clock())
        if refused is not None:
            return QuotaVerdict(None, refused[0], refused[1])
        member = member_of(self.replica, request_id)
        return QuotaVerdict(QuotaTicket(key.name, member, key.tokens_per_minute))

    def shadow_ticket(self, key: ApiKey) -> None:
        """Count a store-admitted request here too (see the module docstring)."""
        self.key_state(key).inflight += 1

    def return_ticket(self, ticket: QuotaTicket, tokens: int) -> None:
        st = self.quotas.get(ticket.key)
        if st is None:
            return
        st.inflight = max(0, st.inflight - 1)
        if tokens > 0:
            st.tokens.charge(self.clock(), tokens)

    async def finish_quota(self, ticket: QuotaTicket, tokens: int = 0) -> None:
        self.return_ticket(ticket, tokens)

    # ---- slot-freed signal
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]:
        return self.signal.subscribe(listener)

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None:
        return await self.signal.wait(model, timeout)

    # ---- lifecycle
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
