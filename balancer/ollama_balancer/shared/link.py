"""A replica's link to the store: up or down, and the background work that keeps it so.

* **Start**: one connection attempt (bounded by the op timeout); unreachable → down,
  and the supervisor tries again every ``reconnect_interval``.
* **While up**: the events channel is listened to; the mirror is refreshed every
  ``refresh_interval`` and the leases held renewed every ``renew_interval``; a ping
  goes out when nothing else proved the store alive for ``health_interval``.
* **Down** at the first failure anywhere — an operation run through :meth:`StoreLink.run`,
  the channel, a ping — and the failed operation is the caller's to serve locally.
* **Back**: what this replica still holds is re-registered and what it gave back
  meanwhile removed (:mod:`~ollama_balancer.core.shared.resync`), the channel
  subscribed, the mirror refreshed; then it is up.

The scheduler's board rides along: this replica's holders and waiting requests (as
local state shadows them) are re-asserted with every renewal and on the way back
(:meth:`~.boardstore.BoardStore.reassert`); going down, local state takes over the
fair-share counters the mirror last showed, and coming back re-asserts them (the
store keeps the higher of its value and this replica's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..core.shared.board import SlotHolder, Waiter
from ..core.shared.local import LocalState
from ..core.shared.model import Lease, QuotaTicket
from ..core.shared.protocol import StoreUnavailable
from ..core.shared.resync import Entry, entries_of, plan_resync
from .store import RedisState

__all__ = ["EVENT_DOWN", "EVENT_UNREACHABLE", "EVENT_UP", "Held", "SharedObserver", "StoreLink"]

T = TypeVar("T")

EVENT_UP = "shared_state_up"
EVENT_DOWN = "shared_state_down"
EVENT_UNREACHABLE = "shared_state_unreachable"


class SharedObserver(Protocol):
    """What the shared state reports (the Prometheus side is :mod:`.metrics`)."""

    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...


class _Quiet:
    def state_up(self, up: bool) -> None: ...
    def fallback(self) -> None: ...
    def acquire_seconds(self, seconds: float, granted: bool) -> None: ...
    def reclaimed(self, count: int) -> None: ...


@dataclass
class Held:
    """What this replica holds in the store (by member), and the entries the store knew
    that it gave back while the store could not hear it."""

    leases: dict[str, Lease] = field(default_factory=dict)
    tickets: dict[str, QuotaTicket] = field(default_factory=dict)
    given_back: set[Entry] = field(default_factory=set)


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
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

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
        self.fallbacks += 1
        self.since = self.local.clock()
        if self.store.mirror.synced:
            # The fleet's fair-share clock as last seen goes on locally (else an idle
            # tenant's counter would be this replica's alone).
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
        await self.store.renew(plan.register)
        held.given_back.clear()
        for member, lease in list(held.leases.items()):
            held.leases[member] = dataclasses.replace(lease, shared=True)
        for member, ticket in list(held.tickets.items()):
            held.tickets[member] = dataclasses.replace(ticket, shared=True)
        # The board's part: counters at least as far as this replica saw them (a store that
        # restarted empty gets them back; one that lived on keeps its higher values).
        await self.store.boards.reassert(
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
