"""A replica's link to the store: up or down, and the background work that keeps it so.

* **Start**: one connection attempt (bounded by the op timeout); unreachable → down,
  and the supervisor tries again every ``reconnect_interval``.
* **While up**: the events channel is listened to; the mirror is refreshed every
  ``refresh_interval`` and the leases held renewed every ``renew_interval``; a ping
  goes out when nothing else proved the store alive for ``health_interval``.
* **Down** at the first failure anywhere — an operation run through :meth:`StoreLink.run`,
  the channel, a ping — and the failed operation is the caller's to serve locally.
* **Back**: what this replica still holds is re-registered and what it gave back
  meanwhile removed (:mod:`~ollama_balancer.core.shared.resync`), what a store that came
  back empty lacks written back (:mod:`.rebuild`), the scheduler's board re-asserted, the
  channel subscribed, the mirror refreshed; then it is up.  A store emptied under a live
  connection (a flush, a failover that kept the address) is told by its epoch at the next
  refresh and gets the same re-assertion (:meth:`StoreLink._reassert`, one path for both).

The scheduler's board rides along: this replica's holders and waiting requests (as
local state shadows them) are re-asserted with every renewal and on the way back
(:meth:`~.boardstore.BoardStore.reassert`); going down, local state takes over the
fair-share counters the mirror last showed, and coming back re-asserts them (the
store keeps the higher of its value and this replica's).  The refresh that reads a new
epoch puts back the counters it last saw itself (only that read still holds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..core.shared.board import CounterKey, SlotHolder, Waiter
from ..core.shared.local import LocalState
from ..core.shared.model import Lease, QuotaTicket
from ..core.shared.protocol import StoreUnavailable
from ..core.shared.resync import Entry, entries_of, plan_resync
from .rebuild import Memory, settle
from .store import RedisState

__all__ = [
    "EVENT_DOWN",
    "EVENT_REBUILT",
    "EVENT_UNREACHABLE",
    "EVENT_UP",
    "Held",
    "SharedObserver",
    "StoreLink",
]

T = TypeVar("T")

EVENT_UP = "shared_state_up"
EVENT_DOWN = "shared_state_down"
EVENT_UNREACHABLE = "shared_state_unreachable"
EVENT_REBUILT = "shared_state_rebuilt"


class SharedObserver(Protocol):
    """What the shared state reports (the Prometheus side is :mod:`.metrics`)."""

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


@dataclass
class Held:
    """What this replica holds in the store (by member), and the entries the store knew
    that it gave back while the store could not hear it."""

    leases: dict[str, Lease] = field(default_factory=dict)
    tickets: dict[str, QuotaTicket] = field(default_factory=dict)
    given_back: set[Entry] = field(default_factory=set)
    #: Members of the leases whose first byte came (a load they wait for is over).
    answered: set[str] = field(default_factory=set)
    #: Loads this replica started that finished (True) or were abandoned (False) while the
    #: store could not hear it: the store still lists them as under way.
    settle: dict[str, tuple[Lease, bool]] = field(default_factory=dict)


class StoreLink:
    """Whether the store serves (``up``), and the tasks that notice and mend it."""

    def __init__(
        self,
        store: RedisState,
        local: LocalState,
        held: Held,
        *,
        renew_interval: float,
        refresh_interval: float,
        health_interval: float,
        reconnect_interval: float,
        observer: SharedObserver | None = None,
        log: Any = None,
    ) -> None:
        self.store = store
        self.local = local
        self.held = held
        self.renew_interval = renew_interval
        self.refresh_interval = refresh_interval
        self.health_interval = health_interval
        self.reconnect_interval = reconnect_interval
        self.observer: SharedObserver = observer or _Quiet()
        self.log = log or logging.getLogger("ollama_fleet.shared")
        self.up = False
        self.fallbacks = 0
        self.since = local.clock()
        self.last_error = ""
        self._last_ok = 0.0
        self._reclaimed_seen = 0
        self._reconnects_seen = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Set while the store serves (a held cold-load decision waits for it).
        self.back = asyncio.Event()
        self.memory = Memory()

    def status(self) -> dict[str, object]:
        """The link's part of ``/-/fleet``'s ``shared_state``."""
        return {
            "mode": "shared" if self.up else "fallback",
            "store": self.store.address.redacted(),
            "replica": self.store.replica,
            "up": self.up,
            "since": self.since,
            "fallbacks": self.fallbacks,
            "last_error": self.last_error,
            "leases_reclaimed": self.store.reclaimed,
            "rebuilds": self.memory.rebuilds,
        }

    # ------------------------------------------------------------ up and down
    async def run(self, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run ``op`` on the store if it is up: (True, result), or (False, None) — and down
        if it failed."""
        if not self.up:
            return False, None
        try:
            result = await op()
        except StoreUnavailable as exc:
            self.down(exc)
            return False, None
        self._ok()
        return True, result

    def down(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if not self.up:
            return
        self.up = False
        self.back.clear()
        self.fallbacks += 1
        self.since = self.local.clock()
        if self.store.mirror.synced:
            # The fleet's fair-share clock as last seen goes on locally (else an idle
            # tenant's counter would be this replica's alone).
            for key, value in self.store.board().counters.items():
                self.local.book.set_counter(key, value)
        self.memory.forget_store(self.store, self.local, self.since)
        self.store.mirror.reset()
        self.observer.state_up(False)
        self.observer.fallback()
        self.log.warning("%s: serving with local state: %s", EVENT_DOWN, exc)
        if self._listener is not None:
            self._listener.cancel()
        self._wake.set()

    async def wait_back(self, seconds: float) -> None:
        """Until the store serves again, or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.back.wait()

    def _ok(self) -> None:
        self._last_ok = self.local.clock()
        gone = self.store.reclaimed - self._reclaimed_seen
        if gone:
            self._reclaimed_seen = self.store.reclaimed
            self.observer.reclaimed(gone)
        reconnects = self.store.connection.reconnects
        if reconnects > self._reconnects_seen:
            self.observer.reconnected(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects

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
                    entries_of(
                        self.store.keys, self.held.leases.values(), self.held.tickets.values()
                    )
                )
                await self.store.boards.drop_waiters(w.request_id for w in self._own_waiters())
        self.up = False
        await self.store.close()

    async def _connect(self) -> None:
        """Connect, re-register what this replica holds, subscribe, refresh; then share."""
        held = self.held
        await self.store.connect()
        plan = plan_resync(self.store.keys, held.leases, held.tickets, held.given_back)
        await self.store.remove(plan.remove)
        # The board's counters at least as far as this replica saw them (a store that
        # restarted empty gets them back; one that lived on keeps its higher values).
        await self._reassert(plan.register, self.local.book.board().counters)
        held.given_back.clear()
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
        self.back.set()
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

    async def _reassert(
        self, register: Sequence[Entry], counters: Mapping[CounterKey, float] | None = None
    ) -> None:
        """Before granting anything new, put back what the store lacks of what this replica
        holds and knows: its leases and tickets (``register``, a fresh expiry), the loads it
        ended while the store could not hear, what an emptied store lost (loads in progress,
        finished loads, learned times), then the board's part (its holders, waiting requests
        and ``counters``).  A no-op on a store that kept everything."""
        held = self.held
        await self.store.renew(register)
        await settle(self.store, held.settle.values())
        held.settle.clear()
        await self._write_back(len(register))
        for member, lease in list(held.leases.items()):
            held.leases[member] = dataclasses.replace(lease, shared=True)
        for member, ticket in list(held.tickets.items()):
            held.tickets[member] = dataclasses.replace(ticket, shared=True)
        # after the leases: a holder document is kept only while its lease lives
        await self.store.boards.reassert(self._own_holders(), self._own_waiters(), counters)

    async def _write_back(self, leases: int) -> None:
        """Before granting anything new: what the store lacks of this replica's knowledge
        (a no-op for a store that kept it); say so if the store had lost its contents."""
        done = await self.memory.write_back(
            self.store, self.local, self.held.leases, self.held.answered
        )
        if done.lost:
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

    async def _rebuild_if_lost(self) -> None:
        """A store emptied under a live connection (a flush, a failover that kept the
        address): the epoch the last refresh read says so; write everything back."""
        if not self.memory.lost(self.store):
            return
        self.store.mirror.reset()  # its sequence numbers belong to the lost contents
        plan = plan_resync(self.store.keys, self.held.leases, self.held.tickets, ())
        # the board's counters: the refresh that read the new epoch put them back
        await self._reassert(plan.register)
        await self.store.refresh()

    async def _listen(self, subscribed: asyncio.Event) -> None:
        try:
            await self.store.listen(subscribed)
        except StoreUnavailable as exc:
            if subscribed.is_set():
                self.down(exc)
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
                await self.run(self.store.ping)

    async def _periodic(self) -> None:
        """Refresh the mirror every ``refresh_interval``; renew held leases every renew."""
        next_renew = self.local.clock() + self.renew_interval
        while True:
            await asyncio.sleep(self.refresh_interval)
            if not self.up:
                continue
            await self.run(self.store.refresh)
            await self.run(self._rebuild_if_lost)
            if self.local.clock() >= next_renew:
                next_renew = self.local.clock() + self.renew_interval
                entries = entries_of(
                    self.store.keys,
                    [x for x in self.held.leases.values() if x.shared],
                    [t for t in self.held.tickets.values() if t.shared],
                )
                await self._renew(entries)

    async def _renew(self, entries: list[Entry]) -> None:
        async def renew() -> None:
            await self.store.renew(entries)
            # after the leases: a holder document is kept only while its lease lives
            await self.store.boards.reassert(self._own_holders(), self._own_waiters())

        await self.run(renew)

    def _own_holders(self) -> list[SlotHolder]:
        """The holders of this replica's shared leases, as local state shadows them."""
        return [
            h
            for h in self.local.book.holders_of(self.local.replica)
            if (lease := self.held.leases.get(h.member)) is not None and lease.shared
        ]

    def _own_waiters(self) -> list[Waiter]:
        return list(self.local.board().waiters.values())
