"""Where requests wait for a warm slot: the I/O shell around the wait queue (late binding).

The decisions are pure: :mod:`.core.queueing` bounds the waiting requests (and, with
``queue_policy=order``, orders them), :mod:`.core.scheduling` decides who takes the free
slots of each model's pool and whose slot is taken back (``queue_policy=reclaim``, the
default), and :mod:`.core.dispatch` binds requests to pods.  This module owns the futures
the request handlers await and *when* to decide: :meth:`WaitRoom.pump` runs on an arrival,
when a slot is released on this replica or another (through the shared state), when a
load finishes or the fleet changes, at the queue's next deadline or promotion, and once a
second while anything waits.  A pump has no ``await``, so nothing interleaves with it.  A
bind holds its slot here until the request's handler has taken the slot's lease
(:meth:`WaitRoom.settle`), so the next pump sees it taken; if another replica took the slot
first, the request waits again.

With ``reclaim``, one pump per model with requests waiting here:

1. the pool as the scheduler sees it, fleet-wide: the board's leases (whose they are) and
   the bound-but-not-yet-leased requests of this replica; every replica's waiting requests,
   with this replica's own from its queue (always current);
2. :func:`~.core.scheduling.plan` with the pool's free slots: the grants of this replica are
   bound by dispatch to pods with a free slot; the others may only start a cold load (dispatch
   on the fleet with the pool's free slots taken), else they wait;
3. a request holding a promise (a slot taken back for it) is bound to that pod once the
   victim has let go;
4. the plan's preemptions whose beneficiary waits here are carried out
   (:meth:`SharedState.reclaim <.core.shared.protocol.SharedState.reclaim>`): the victim's
   replica cancels it and resumes it later.

Every replica runs the same plan on the same board, and binds only its own grants, so N
replicas decide as one; the lease (atomic in the store) arbitrates a race.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .core.dispatch import Bind, Binding, dispatch, warm_pods
from .core.errors import BalancerError, TooManyRequests, for_outcome
from .core.fleet import FleetSnapshot
from .core.fleetstate import FleetState
from .core.occupancy import Key, Occupancy
from .core.queueing import QueuePolicy, QueueSettings, Waiting, WaitQueue, retry_after
from .core.rankers import Choice, Reason
from .core.routing import Policy
from .core.scheduling import (
    Admission,
    Candidate,
    Holder,
    PoolView,
    SchedulePlan,
    admit,
    plan,
)
from .core.shared.board import Board, Reservation, Waiter
from .core.shared.protocol import SharedState
from .core.tokens import RateBook
from .polling import FleetTracker

__all__ = ["RESERVATION_SECONDS", "WaitRoom"]

#: While anything waits, decide again at least this often (a lease freed by TTL on another
#: replica, a lost "slot freed" message, a hold for a pod that may appear).
IDLE_PUMP_SECONDS = 1.0
#: How long a slot taken back stays promised to its beneficiary (the victim's relay stops
#: within about a token; its replica may be slow to hear; the beneficiary may be gone).
RESERVATION_SECONDS = 10.0

Outcome = Bind | BalancerError


@dataclass(slots=True)
class _Bound:
    """A request bound to a slot whose lease its handler has not taken yet."""

    waiting: Waiting
    backend: str
    at: float


class WaitRoom:
    def __init__(
        self,
        settings: QueueSettings,
        view: FleetTracker,
        occupancy: Callable[[], Occupancy],
        policy: Policy,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        hold_unavailable: float = 0.0,
        shared: SharedState | None = None,
        replica: str = "local",
        rates: RateBook | None = None,
    ) -> None:
        self.settings = settings
        self.queue = WaitQueue(settings)
        self.view = view
        self._occupancy = occupancy
        self.policy = policy
        self.rng = rng
        self.clock = clock
        self.hold_unavailable = hold_unavailable
        self.shared = shared
        self.replica = replica
        #: The models' learned token rates: a request that arrived before its model's were
        #: learned has its expected slot-seconds made again from them (:meth:`_current`).
        self.rates = rates
        #: The scheduler's policy when it decides (``queue_policy=reclaim`` with a board).
        self.scheduler = (
            settings.scheduler()
            if settings.policy == QueuePolicy.RECLAIM and shared is not None
            else None
        )
        #: Requests bound to a slot whose handler has not taken the lease yet.
        self._bound: dict[str, _Bound] = {}
        #: Waiting requests a pump already kept waiting: their spill was decided on arrival
        #: (dispatch's ``stayed``).
        self._stayed: set[str] = set()
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._posted: set[str] = set()
        #: Victims (lease members) this replica asked to take back and has no answer for yet.
        self._asking: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poked = False
        self._timer: asyncio.TimerHandle | None = None
        #: model -> a newcomer's expected seconds to a slot (the last pump's figure)
        self.expected_wait: dict[str, float] = {}
        #: model -> the scheduler's last plan (class shares for the gauges).
        self.plans: dict[str, SchedulePlan] = {}
        #: request id -> the wait estimated when it arrived (reclaim), while it waits.
        self.estimates: dict[str, float] = {}
        #: request id -> its estimate, once bound: the handler takes it (X-Queue-Estimate).
        self.granted_estimates: dict[str, float] = {}
        #: Listeners told, at each bind, the estimate made at arrival and the actual wait.
        self.estimate_listeners: list[Callable[[Waiting, float, float], None]] = []
        #: Listeners told about each request that left the queue: (waiting, outcome, now).
        self.listeners: list[Callable[[Waiting, str, float], None]] = []
        #: Listeners told about each preemption this replica asked for:
        #: (model, victim's class, reason).
        self.preempt_listeners: list[Callable[[str, str, str], None]] = []

    # ------------------------------------------------------------------ requests
    def admission(self, request: Waiting) -> Admission | None:
        """The scheduler's estimate for ``request`` arriving now (None without a scheduler)."""
        if self.scheduler is None or request.pin is not None:
            return None
        now = self.clock()
        pool = self._pool(request.model, self._board(), self._fleet(now), now)
        policy = self.scheduler
        if request.max_wait is not None:  # its key's own limit
            policy = policy.with_max_wait(request.priority, request.max_wait)
        if not request.rates_learned:
            # Its slot-seconds are the defaults' guess (no answer of the model was timed
            # yet: a model just loading, or one seldom asked for): estimate, never refuse.
            policy = policy.with_max_wait(request.priority, math.inf)
        return admit(pool, policy, _candidate(self._current(request), self.replica, now))

    async def wait(self, request: Waiting) -> Bind:
        """Queue ``request`` until it is bound (returns the bind, its slot reserved) or refused."""
        now = self.clock()
        estimate = self.admission(request)
        if estimate is not None:
            if not estimate.admitted:
                self._tell(request, "refused", now)
                raise TooManyRequests(
                    f"model '{request.display or request.model}' is busy: the estimated "
                    f"wait of {estimate.wait:.0f}s is beyond the {request.priority} "
                    "class's limit",
                    retry_after=max(1, math.ceil(estimate.retry_after or 1)),
                )
            self.estimates[request.id] = estimate.wait
        offer = self.queue.offer(request, now)
        for shed in offer.shed:
            if shed.id != request.id:
                self._resolve(shed, self._full(shed, now), "shed", now)
        if not offer.admitted:
            self.estimates.pop(request.id, None)
            self._tell(request, "shed", now)
            raise self._full(request, now)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._futures[request.id] = future
        self.pump()
        queued = self.queue.get(request.id)
        if queued is not None and self.scheduler is not None and self.shared is not None:
            # Still waiting after the first pump: every replica's scheduler must see it, with
            # the arrival the queue gave it (this replica plans its own requests with that
            # one, the others with the board's: a different one puts one side first).
            self._posted.add(request.id)
            self._spawn(self.shared.post_waiter(_waiter(self._current(queued), self.replica)))
        try:
            outcome = await future
        except asyncio.CancelledError:
            self._futures.pop(request.id, None)
            self.estimates.pop(request.id, None)
            if self.queue.cancel(request.id) is not None:
                self._unpost(request.id)
                self._tell(request, "cancelled", self.clock())
            elif future.done() and not future.cancelled():
                bound = future.result()
                if isinstance(bound, Bind):  # bound in the same loop turn: give the slot back
                    self.settle(bound)
            raise
        if isinstance(outcome, BalancerError):
            raise outcome
        return outcome

    def settle(self, bound: Bind) -> None:
        """The handler of ``bound`` took its lease (or could not): stop holding the slot."""
        self._bound.pop(bound.id, None)
        self.poke()

    def poke(self) -> None:
        """Decide again soon (coalesced: one pump per event-loop turn)."""
        if self._poked or not self._futures:
            return
        self._poked = True
        asyncio.get_running_loop().call_soon(self._poked_pump)

    def waiting(self) -> int:
        return len(self.queue)

    def warm_pods(self, model: str) -> int:
        """Pods holding ``model`` warm (resident or loading) as dispatch sees them now."""
        return warm_pods(self._fleet(self.clock()), model)

    # ------------------------------------------------------------------ decisions
    def _poked_pump(self) -> None:
        self._poked = False
        self.pump()

    def pump(self) -> None:
        now = self.clock()
        for gone in self.queue.expire(now):
            self._resolve(
                gone,
                TooManyRequests(
                    f"no slot for model '{gone.display or gone.model}' freed within "
                    f"{self.queue.settings.max_wait:g}s",
                    retry_after=self._retry_after(gone.model, 0),
                ),
                "expired",
                now,
            )
        waiting = self.queue.ordered(now)
        if not waiting:
            self._stayed.clear()
            self._arm(now)
            return
        fleet = self._fleet(now)
        if self.scheduler is None:
            binds, rejects, waits = self._dispatch(waiting, fleet)
        else:
            binds, rejects, waits = self._schedule(waiting, fleet, now)
        for bind in binds:
            w = self.queue.take(bind.id)
            # Hold the slot until the handler has its lease: the next pump must see it taken.
            held = w if bind.cls is None else replace(w, priority=bind.cls)
            self._bound[bind.id] = _Bound(held, bind.backend, now)
            self._resolve(w, bind, "dispatched", now)
        for reject in rejects:
            w = self.queue.take(reject.id)
            self._resolve(w, for_outcome(reject.outcome), "rejected", now)
        expected: dict[str, float] = {}
        stayed: set[str] = set()
        for w in self.queue.ordered(now):
            if w.model not in expected:
                expected[w.model] = waits.get(w.id, 0.0)
            if w.id in waits or w.id in self._stayed:
                stayed.add(w.id)
        self.expected_wait = expected
        self._stayed = stayed
        self._arm(now)

    def _dispatch(
        self,
        waiting: tuple[Waiting, ...],
        fleet: FleetState,
        ahead: Mapping[str, int] | None = None,
    ) -> tuple[list[Bind], list[Any], dict[str, float]]:
        decided = dispatch(
            waiting,
            fleet,
            self.rng,
            binding=Binding.LATE,
            policy=self.policy,
            hold_unavailable=self.hold_unavailable,
            stayed=self._stayed,
            ahead=ahead or {},
        )
        return list(decided.binds), list(decided.rejects), dict(decided.expected_wait)

    def _schedule(
        self, waiting: tuple[Waiting, ...], fleet: FleetState, now: float
    ) -> tuple[list[Bind], list[Any], dict[str, float]]:
        """One pump of ``queue_policy=reclaim`` (the module docstring's four steps)."""
        assert self.scheduler is not None
        board = self._board()
        binds: list[Bind] = []
        rejects: list[Any] = []
        waits: dict[str, float] = {}
        # Promised slots: the victim let go, the pod is the beneficiary's.
        rest: list[Waiting] = []
        for w in waiting:
            promise = board.reservations.get(w.id)
            if promise is None or w.pin is not None:
                rest.append(w)
            elif promise.victim not in board.holders and fleet.is_routable(promise.pod):
                binds.append(_bind_to(w, promise.pod, now))
            # else: the victim is still letting go; the promise keeps its seat
        pinned = [w for w in rest if w.pin is not None]
        if pinned:
            b, r, x = self._dispatch(tuple(pinned), fleet)
            binds += b
            rejects += r
            waits.update(x)
        by_model: dict[str, list[Waiting]] = {}
        for w in rest:
            if w.pin is None:
                by_model.setdefault(w.model, []).append(w)
        # A plan is kept (for the metrics) while its model waits or has warm slots: a name
        # no pod holds (a client's typo, answered 404) leaves no plan behind.
        for model in [m for m in self.plans if m not in by_model and not _warm_slots(fleet, m)]:
            del self.plans[model]
        for model, mine in by_model.items():
            pool = self._pool(model, board, fleet, now, mine)
            free = self._free(model, fleet, board)
            decided = plan(pool, self.scheduler, free, estimate=False)
            if pool.slots:
                self.plans[model] = decided
            granted = {c.id for c in decided.granted_to(self.replica)}
            ids = {c.id: i for i, c in enumerate(decided.order)}
            ordered = sorted(mine, key=lambda w: ids.get(w.id, len(ids)))
            go = tuple(w for w in ordered if w.id in granted)
            stay = tuple(w for w in ordered if w.id not in granted)
            if go:
                b, r, x = self._dispatch(go, fleet)
                # A batch request that aged competed as standard: it holds a standard seat.
                own = {w.id: w.priority for w in go}
                aged = {c.id: c.cls for c in decided.grants if own.get(c.id, c.cls) is not c.cls}
                binds += [replace(bd, cls=aged[bd.id]) if bd.id in aged else bd for bd in b]
                rejects += r
                waits.update(x)
            if stay:
                # Those without a grant may still start a cold load (more slots for all),
                # never take a warm slot the plan gave to someone else.
                full = fleet.with_occupancy(_warm_full(fleet, model))
                b, r, x = self._dispatch(stay, full, decided.others_ahead(self.replica))
                binds += b
                rejects += r
                waits.update(x)
            for p in decided.preemptions:
                if p.beneficiary.replica == self.replica:
                    self._reclaim(model, p.victim, p.beneficiary.id, p.reason, now)
        return binds, rejects, waits

    def _reclaim(
        self, model: str, victim: Holder, beneficiary: str, reason: str, now: float
    ) -> None:
        if self.shared is None or victim.lease in self._asking:
            return
        promise = Reservation(
            beneficiary=beneficiary,
            pod=victim.pod,
            model=model,
            victim=victim.lease,
            until=now + RESERVATION_SECONDS,
        )
        self._asking.add(victim.lease)
        shared = self.shared

        async def ask() -> None:
            try:
                if await shared.reclaim(promise):
                    for listener in self.preempt_listeners:
                        listener(model, victim.cls.value, str(reason))
            finally:
                self._asking.discard(victim.lease)

        self._spawn(ask())

    # ------------------------------------------------------------------ the pool
    def _board(self) -> Board:
        assert self.shared is not None
        return self.shared.board()

    def _fleet(self, now: float) -> FleetState:
        held: dict[Key, int] = {}
        for b in self._bound.values():
            key = (b.backend, b.waiting.model)
            held[key] = held.get(key, 0) + 1
        return FleetState.at(
            self.view.snapshot,
            self._occupancy().with_bound(held),
            now,
            fail_threshold=self.policy.fail_threshold,
            stale_after=self.policy.stale_after,
        )

    def _pool(
        self,
        model: str,
        board: Board,
        fleet: FleetState,
        now: float,
        mine: list[Waiting] | None = None,
    ) -> PoolView:
        """``model``'s pool: the board's, with this replica's own waiting requests and bound
        requests as they are here (the board may not have caught up with them)."""
        base = board.pool(model, _warm_slots(fleet, model), now)
        if mine is None:
            mine = [w for w in self.queue.ordered(now) if w.model == model and w.pin is None]
        own = tuple(_candidate(self._current(w), self.replica, now) for w in mine)
        others = tuple(c for c in base.waiting if c.replica != self.replica)
        leased = {h.request_id for h in board.holders.values() if h.model == model}
        # A beneficiary bound to its promised seat holds it in the board's pool already.
        leased.update(b for b in board.reservations if b in board.waiters)
        bound = tuple(
            _holder(b, self.replica)
            for rid, b in self._bound.items()
            if b.waiting.model == model and rid not in leased
        )
        return PoolView(
            model=model,
            slots=base.slots,
            holders=base.holders + bound,
            waiting=others + own,
            counters=base.counters,
            now=now,
        )

    def _free(self, model: str, fleet: FleetState, board: Board) -> int:
        """Free slots of ``model``'s warm pods, fleet-wide, less the seats promised."""
        free = 0
        for s in fleet.routable:
            occ = fleet.occupancy
            if s.resident_model(model) is None and occ.loading(s.name, model) is None:
                continue
            free += max(0, max(1, s.backend.slots) - occ.inflight(s.name, model))
            free -= board.promised(s.name, model)
        return max(0, free)

    # ------------------------------------------------------------------ helpers
    def _current(self, w: Waiting) -> Waiting:
        """``w`` with its expected slot-seconds from its model's learned rates, when it
        arrived before they were learned.

        The default rates are a guess that can be off several times over (a fast model,
        a slow GPU); kept, the guess orders the requests that arrived before the first
        answer against those after with the wrong scale: with shortest-work-first and
        aging, a request due at ``arrival + expected`` waited behind every later arrival
        of the next tens of seconds (in ``bench routing``'s bursty trace, the first burst
        of a model whose rate was 10x the default waited up to 50 s longer than FIFO)."""
        rates, estimate = self.rates, w.estimate
        if w.rates_learned or rates is None or estimate is None or not rates.knows(w.model):
            return w
        return replace(w, expected_seconds=rates.seconds(w.model, estimate), rates_learned=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a store operation to its end even if the request that asked is cancelled."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unpost(self, request_id: str) -> None:
        if request_id in self._posted and self.shared is not None:
            self._posted.discard(request_id)
            self._spawn(self.shared.drop_waiter(request_id))

    def _arm(self, now: float) -> None:
        """Wake at the queue's next deadline or promotion, and at least every second."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._futures:
            return
        wake = now + IDLE_PUMP_SECONDS
        change = self.queue.next_change(now)
        if change is not None:
            wake = min(wake, change)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, wake - now), self.pump)

    # ------------------------------------------------------------------ answers
    def _resolve(self, w: Waiting, outcome: Outcome, how: str, now: float) -> None:
        future = self._futures.pop(w.id, None)
        estimate = self.estimates.pop(w.id, None)
        if estimate is not None and how == "dispatched":
            if future is not None and not future.done():
                self.granted_estimates[w.id] = estimate
            for listener in self.estimate_listeners:
                listener(w, estimate, w.waited(now))
        if how != "dispatched":
            self._unpost(w.id)  # a bind's lease takes it off the board (acquire)
        else:
            self._posted.discard(w.id)
        if future is not None and not future.done():
            future.set_result(outcome)
        elif isinstance(outcome, Bind):  # its client is gone: nobody will take the slot
            self.settle(outcome)
            self._unpost(w.id)
        self._tell(w, how, now)

    def _tell(self, w: Waiting, how: str, now: float) -> None:
        for listener in self.listeners:
            listener(w, how, now)

    def _full(self, w: Waiting, now: float) -> TooManyRequests:
        return TooManyRequests(
            f"too many requests waiting for model '{w.display or w.model}' "
            f"(limit {self.queue.settings.max_per_model})",
            retry_after=self._retry_after(w.model, self.queue.length(w.model)),
        )

    def _retry_after(self, model: str, position: int) -> int:
        slots = sum(
            max(1, s.backend.slots)
            for s in self.view.snapshot.backends
            if s.resident_model(model) is not None
        )
        return retry_after(position, self._occupancy().service_seconds(model), max(1, slots))


# ---------------------------------------------------------------------- conversions
def _candidate(w: Waiting, replica: str, now: float) -> Candidate:
    return Candidate(
        id=w.id,
        replica=replica,
        cls=w.priority,
        tenant=w.tenant,
        weight=w.weight,
        arrival=w.arrived if w.enqueued or w.arrival is not None else now,
        expected_seconds=max(0.0, w.expected_seconds),
        deadline=w.finish_by,
        preemptions=w.preemptions,
        resumable=w.resumable,
    )


def _waiter(w: Waiting, replica: str) -> Waiter:
    """The board's entry of ``w``, a request as its queue holds it (``enqueued`` set)."""
    return Waiter(
        request_id=w.id,
        model=w.model,
        replica=replica,
        cls=w.priority,
        tenant=w.tenant,
        weight=w.weight,
        arrival=w.arrived,
        expected_seconds=w.expected_seconds,
        deadline=w.finish_by,
        preemptions=w.preemptions,
        resumable=w.resumable,
        pinned=w.pin is not None,
    )


def _holder(b: _Bound, replica: str) -> Holder:
    w = b.waiting
    return Holder(
        lease=f"bound:{w.id}",
        pod=b.backend,
        replica=replica,
        cls=w.priority,
        tenant=w.tenant,
        weight=w.weight,
        started=b.at,
        expected_seconds=max(0.0, w.expected_seconds),
        preemptions=w.preemptions,
        resumable=w.resumable,
    )


def _bind_to(w: Waiting, pod: str, now: float) -> Bind:
    """The bind of a request to the slot promised to it (the victim's pod, warm)."""
    choice = Choice(pod, Reason.RESIDENT)
    return Bind(w.id, w.model, pod, Reason.RESIDENT, (choice,), w.waited(now))


def _warm(snapshot: FleetSnapshot, occupancy: Occupancy, pod: str, model: str) -> bool:
    state = snapshot.get(pod)
    return state is not None and (
        state.resident_model(model) is not None or occupancy.loading(pod, model) is not None
    )


def _warm_slots(fleet: FleetState, model: str) -> int:
    return sum(
        max(1, s.backend.slots)
        for s in fleet.routable
        if _warm(fleet.snapshot, fleet.occupancy, s.name, model)
    )


def _warm_full(fleet: FleetState, model: str) -> Occupancy:
    """``fleet``'s occupancy with every free slot of ``model``'s warm pods taken."""
    extra: dict[Key, int] = {}
    for s in fleet.routable:
        if _warm(fleet.snapshot, fleet.occupancy, s.name, model):
            free = max(1, s.backend.slots) - fleet.occupancy.inflight(s.name, model)
            if free > 0:
                extra[(s.name, model)] = free
    return fleet.occupancy.with_bound(extra)
