"""Slot claims: a request's hold on one pod's slot, taken before it is sent and given back
once, whatever happens.

* **Early binding** (:meth:`SlotClaims.early`): the first ranked warm pod whose slots
  are not all held fleet-wide, else the first choice anyway (it queues there, as Ollama
  would, and is counted).  A cold load is decided by one replica at a time: the model's
  load lock, a fresh view, routing again, then the lease that records the load.
* **Late binding** (:meth:`SlotClaims.late`): the request waits in the wait room until
  dispatch binds it to a slot, then takes the slot's lease; if another replica took that
  slot meanwhile, it waits again.
* **Failover** (:meth:`SlotClaims.lease_for`): an attempt on another pod than the one
  claimed gives that slot back and takes one where it goes.
* **Release** (:meth:`SlotClaims.release`): with what the answer taught, its quota and
  its conversation's pod, in one call — shielded, so a cancelled handler still gives a
  shared lease back instead of leaving it to expire.

A claim can be released and taken again while its request lives.  Routing is handed in
(a function), so claims never call back into the proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ollama_wire.backend import Backend

from ..context import QuotaHold
from ..core.dispatch import Bind
from ..core.queueing import Waiting
from ..core.rankers import COLD_REASONS, Choice, Reason
from ..core.record import RequestRecord
from ..core.routing import RouteRequest
from ..core.shared.board import Charge, CounterKey, SlotHolder
from ..core.shared.gate import load_decision
from ..core.shared.local import LocalState
from ..core.shared.model import Learned, Lease
from ..core.shared.protocol import SharedState
from ..polling import FleetTracker
from ..telemetry import get_logger
from ..waitroom import WaitRoom
from .resumable import Resumable

__all__ = ["WARM", "Charged", "Claim", "Route", "SlotClaims"]

log = get_logger("ollama_fleet.balancer")

#: Reasons whose pod has (or is loading) the model: a slot there is worth a lease attempt.
WARM = frozenset({Reason.RESIDENT, Reason.LOADING, Reason.AFFINITY, Reason.NAMED})

#: The routing function: a request to its ranked choices (raises when unroutable).
Route = Callable[[RouteRequest], tuple[Choice, ...]]


@dataclass(slots=True)
class Claim:
    """One request's hold on the fleet: its slot lease (while it has one), what it learned,
    its quota ticket and its conversation key, all given back in one release.
    ``takes_slot``: the route counts against slots (``/api/show`` does not)."""

    model: str
    takes_slot: bool = True
    lease: Lease | None = None
    learned: Learned | None = None
    quota: QuotaHold | None = None
    affinity: str | None = None
    #: The scheduler's charge for the lease (``queue_policy=reclaim``): its fair-share
    #: counter, the tenant's weight, the slot-seconds charged and when the slot was taken.
    charged: Charged | None = None
    #: What resuming the request needs, when the scheduler may take it back.
    resume: Resumable | None = None


@dataclass(slots=True)
class Charged:
    key: CounterKey
    weight: float
    seconds: float
    since: float


class SlotClaims:
    """Takes and gives back slot leases in the shared state for the proxy's requests."""

    def __init__(
        self,
        shared: SharedState,
        view: FleetTracker,
        route: Route,
        waitroom: WaitRoom | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.view = view
        self._route = route
        self.waitroom = waitroom
        self._clock = clock
        #: Leases carry whose they are and charge fair share (``queue_policy=reclaim``).
        self.scheduling = waitroom is not None and waitroom.scheduler is not None
        # Local state releases at once, without suspending: nothing to shield.
        self._local = isinstance(shared, LocalState)
        if waitroom is not None:
            view.subscribe(lambda _change: self.slot_freed())
            # A slot freed here or on another replica (through the store): dispatch now.
            shared.on_slot_freed(lambda _freed: self.slot_freed())

    # ------------------------------------------------------------- early binding
    async def early(
        self, req: RouteRequest, ranked: tuple[Choice, ...], rid: str, claim: Claim
    ) -> tuple[Choice, ...]:
        """Take a slot lease before sending; the ranking, the claimed choice first."""
        if ranked[0].reason in COLD_REASONS and self.shared.status().get("mode") != "local":
            async with load_decision(self.shared, req.model, rid):
                ranked = self._route(req)  # a load another replica just started is now seen
                return await self._take(ranked, rid, claim)
        return await self._take(ranked, rid, claim)

    async def _take(self, ranked: tuple[Choice, ...], rid: str, claim: Claim) -> tuple[Choice, ...]:
        snapshot = self.view.snapshot
        for i, choice in enumerate(ranked):
            state = snapshot.get(choice.backend)
            if state is None:
                continue
            if i and choice.reason not in WARM:
                break  # past the warm pods: the first choice queues rather than spill
            grant = await self.shared.acquire(
                choice.backend,
                claim.model,
                slots=max(1, state.backend.slots),
                request_id=rid,
                cold=choice.reason in COLD_REASONS,
            )
            if grant.lease is not None:
                claim.lease = grant.lease
                return (choice, *(c for c in ranked if c is not choice))
        first = ranked[0]
        state = snapshot.get(first.backend)
        if state is not None:
            grant = await self.shared.acquire(
                first.backend,
                claim.model,
                slots=max(1, state.backend.slots),
                request_id=rid,
                cold=first.reason in COLD_REASONS,
                overflow=True,
            )
            claim.lease = grant.lease
        return ranked

    # -------------------------------------------------------------- late binding
    async def late(
        self, waiting: Waiting, record: RequestRecord, claim: Claim, *, pinned: bool
    ) -> tuple[Choice, ...]:
        """Wait until dispatch binds the request to a slot, then take the slot's lease."""
        assert self.waitroom is not None
        while True:
            bound = await self.waitroom.wait(waiting)
            arrived = waiting.arrival
            if arrived is None:
                arrived = self._clock() - bound.waited  # when it was queued
            # A batch request that aged was bound as standard: it holds (and is charged) so.
            seat = waiting if bound.cls is None else replace(waiting, priority=bound.cls)
            try:
                if bound.cold and not pinned and self.shared.status().get("mode") != "local":
                    # One replica at a time decides a model's cold load, as early binding
                    # does: under the lock, with the store's fresh view, a copy another
                    # replica started since this decision is seen, and the request is
                    # decided again in its place (it will most often wait for that copy).
                    async with load_decision(self.shared, claim.model, waiting.id):
                        fresh = self.waitroom.warm_pods(claim.model) <= bound.warm
                        got = await self._lease(bound, seat, claim, pinned) if fresh else None
                        why = "load_started_elsewhere"
                else:
                    got = await self._lease(bound, seat, claim, pinned)
                    why = "lease_race_lost"
            finally:
                self.waitroom.settle(bound)
            record.queue_wait = (record.queue_wait or 0.0) + bound.waited
            if got is not None:
                claim.lease = got
                return bound.ranked
            claim.charged = None
            # Lost the race for the slot (another replica bound a request to it first), or
            # another replica started the load: queue again in the same place, its first
            # arrival kept (the fleet-wide order's).
            log.info(
                why,
                request_id=record.request_id,
                pod=bound.backend,
                model=claim.model,
                waited=round(bound.waited, 4),
            )
            waiting = replace(waiting, id=f"{waiting.id}+", arrival=arrived)

    async def _lease(self, bound: Bind, seat: Waiting, claim: Claim, pinned: bool) -> Lease | None:
        """The lease of the slot ``bound`` names, or None when another request took it."""
        state = self.view.snapshot.get(bound.backend)
        holder, charge = self._charge(seat, claim) if self.scheduling else (None, None)
        grant = await self.shared.acquire(
            bound.backend,
            claim.model,
            slots=max(1, state.backend.slots) if state else 1,
            request_id=seat.id,
            cold=bound.cold,
            # a pinned request, or one bound to a cold load, goes there regardless
            overflow=bound.cold or pinned,
            holder=holder,
            charge=charge,
        )
        return grant.lease

    def _charge(self, w: Waiting, claim: Claim) -> tuple[SlotHolder, Charge]:
        """What a lease of ``w`` puts on the scheduler's board, and its fair-share charge (the
        tenant's counter first raised to the class's lowest: an idle tenant banks no credit)."""
        key: CounterKey = (w.model, w.priority, w.tenant)
        floor = self.shared.board().counter_floor(w.model, w.priority, w.tenant)
        weight = w.weight if w.weight > 0 else 1.0
        claim.charged = Charged(key, weight, w.expected_seconds, self._clock())
        holder = SlotHolder(
            member="",
            pod="",
            model=w.model,
            replica="",
            request_id=w.id,
            cls=w.priority,
            tenant=w.tenant,
            weight=weight,
            expected_seconds=w.expected_seconds,
            preemptions=w.preemptions,
            resumable=w.resumable,
        )
        return holder, Charge(key, w.expected_seconds / weight, floor)

    # ------------------------------------------------------------------ failover
    async def lease_for(
        self, claim: Claim, backend: Backend, choice: Choice, record: RequestRecord
    ) -> None:
        """Hold a slot on ``backend`` for an attempt there: the claimed one, or (a failover,
        or a claim for a choice that was skipped) one taken now, since the request goes
        there now."""
        if claim.lease is not None and claim.lease.pod != backend.name:
            await self._release(claim, record)
        if claim.takes_slot and claim.lease is None:
            grant = await self.shared.acquire(
                backend.name,
                claim.model,
                slots=max(1, backend.slots),
                request_id=record.request_id,
                cold=choice.reason in COLD_REASONS,
                overflow=True,
            )
            claim.lease = grant.lease

    async def first_byte(self, claim: Claim) -> float | None:
        """The pod answered: the seconds its load took when this request started one."""
        loaded = await self.shared.first_byte(claim.lease) if claim.lease else None
        if loaded is not None or self.scheduling:
            # followers of a load may bind to it now; a request that started generating may
            # now be taken back for one that waits (the scheduler preempts generating ones)
            self.slot_freed()
        return loaded

    # ------------------------------------------------------------------- release
    async def release(self, claim: Claim, record: RequestRecord, answered: bool = False) -> None:
        """Give the slot back even if this handler is being cancelled: a client that closes
        its connection right after the last byte cancels the handler, and a shared lease must
        still be given back (not left to expire with its TTL)."""
        if claim.lease is None:
            return
        if self._local:
            await self._release(claim, record, answered)
        else:
            await asyncio.shield(self._release(claim, record, answered))

    async def _release(self, claim: Claim, record: RequestRecord, answered: bool = False) -> None:
        """Give the slot back with what the request taught; an answered request also settles
        its quota (tokens used) and remembers its conversation's pod — one call for all."""
        lease, claim.lease = claim.lease, None
        if lease is None:
            return
        quota, tokens = None, 0
        if answered and claim.quota is not None and not claim.quota.settled:
            quota, tokens = claim.quota.ticket, record.tokens_used()
            claim.quota.settled = True
        learned, claim.learned = claim.learned, None
        charged, claim.charged = claim.charged, None
        correction = None
        if charged is not None:  # charged an estimate at dispatch: now the slot-seconds held
            held = self._clock() - charged.since
            correction = Charge(charged.key, (held - charged.seconds) / charged.weight)
        await self.shared.release(
            lease,
            learned=learned,
            affinity=claim.affinity if answered else None,
            quota=quota,
            tokens=tokens,
            charge=correction,
        )
        self.slot_freed()

    def slot_freed(self) -> None:
        """A slot may be free: let the wait room decide again."""
        if self.waitroom is not None:
            self.waitroom.poke()
