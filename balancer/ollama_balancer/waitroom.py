"""Where requests wait for a warm slot: the I/O shell around the wait queue (late binding).

The decisions are pure (:mod:`queueing` orders and bounds the waiting requests,
:mod:`dispatch` binds them to pods); this module owns the futures the request
handlers await and *when* to decide: :meth:`WaitRoom.pump` runs on an arrival, when
a slot is released on this replica or a load finishes, when the fleet changes, when
another replica frees a slot (through the shared state), at the queue's next
deadline or promotion, and once a second while anything waits.  A pump has no
``await``, so nothing interleaves with it.  A bind holds its slot here until the
request's handler has taken the slot's lease (:meth:`WaitRoom.settle`), so the next
pump sees it taken; if another replica took the slot first, the request waits again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from .core.dispatch import Bind, Binding, dispatch
from .core.errors import BalancerError, TooManyRequests, for_outcome
from .core.fleetstate import FleetState
from .core.occupancy import Occupancy
from .core.queueing import QueueSettings, Waiting, WaitQueue, retry_after
from .core.routing import Policy
from .polling import FleetTracker

__all__ = ["WaitRoom"]

#: While anything waits, decide again at least this often (a lease freed by TTL on another
#: replica, a lost "slot freed" message, a hold for a pod that may appear).
IDLE_PUMP_SECONDS = 1.0

Outcome = Bind | BalancerError


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
    ) -> None:
        self.queue = WaitQueue(settings)
        self.view = view
        self._occupancy = occupancy
        self.policy = policy
        self.rng = rng
        self.clock = clock
        self.hold_unavailable = hold_unavailable
        #: Slots bound to a request whose handler has not yet taken the lease.
        self._held: dict[tuple[str, str], int] = {}
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._poked = False
        self._timer: asyncio.TimerHandle | None = None
        #: model -> a newcomer's expected seconds to a slot (the last pump's figure)
        self.expected_wait: dict[str, float] = {}
        #: Listeners told about each request that left the queue: (waiting, outcome, now).
        self.listeners: list[Callable[[Waiting, str, float], None]] = []

    # ------------------------------------------------------------------ requests
    async def wait(self, request: Waiting) -> Bind:
        """Queue ``request`` until it is bound (returns the bind, its slot reserved) or refused."""
        now = self.clock()
        offer = self.queue.offer(request, now)
        for shed in offer.shed:
            if shed.id != request.id:
                self._resolve(shed, self._full(shed, now), "shed", now)
        if not offer.admitted:
            self._tell(request, "shed", now)
            raise self._full(request, now)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._futures[request.id] = future
        self.pump()
        try:
            outcome = await future
        except asyncio.CancelledError:
            self._futures.pop(request.id, None)
            if self.queue.cancel(request.id) is not None:
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
        key = (bound.backend, bound.model)
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)
        self.poke()

    def poke(self) -> None:
        """Decide again soon (coalesced: one pump per event-loop turn)."""
        if self._poked or not self._futures:
            return
        self._poked = True
        asyncio.get_running_loop().call_soon(self._poked_pump)

    def waiting(self) -> int:
        return len(self.queue)

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
            self._arm(now)
            return
        fleet = FleetState.at(
            self.view.snapshot,
            self._occupancy().with_bound(self._held),
            now,
            fail_threshold=self.policy.fail_threshold,
            stale_after=self.policy.stale_after,
        )
        decided = dispatch(
            waiting,
            fleet,
            self.rng,
            binding=Binding.LATE,
            policy=self.policy,
            hold_unavailable=self.hold_unavailable,
        )
        for bind in decided.binds:
            w = self.queue.take(bind.id)
            # Hold the slot until the handler has its lease: the next pump must see it taken.
            key = (bind.backend, bind.model)
            self._held[key] = self._held.get(key, 0) + 1
            self._resolve(w, bind, "dispatched", now)
        for reject in decided.rejects:
            w = self.queue.take(reject.id)
            self._resolve(w, for_outcome(reject.outcome), "rejected", now)
        expected: dict[str, float] = {}
        for w in self.queue.ordered(now):
            if w.model not in expected:
                expected[w.model] = decided.expected_wait.get(w.id, 0.0)
        self.expected_wait = expected
        self._arm(now)

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
        if future is not None and not future.done():
            future.set_result(outcome)
        elif isinstance(outcome, Bind):  # its client is gone: nobody will take the slot
            self.settle(outcome)
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
