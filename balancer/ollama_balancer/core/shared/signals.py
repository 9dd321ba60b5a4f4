"""In-process fan-out of "a slot freed" and a bounded conversation → pod map (no I/O).

Both the local and the shared implementation feed the same :class:`FreedSignal`:
locally a release notifies it directly; with Redis every replica's release (and
every lease reclaimed from a dead replica) arrives as an event on the channel.
A waiter (late binding, issue #13) does not care which.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable

from .model import SlotFreed

__all__ = ["AffinityMap", "FreedSignal"]

Listener = Callable[[SlotFreed], None]


class FreedSignal:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._waiters: dict[str, list[asyncio.Future[SlotFreed]]] = {}

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every freed slot (any model); returns the unsubscriber."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    async def wait(self, model: str, timeout: float) -> SlotFreed | None:
        """The next freed slot of ``model`` on any pod, or None after ``timeout`` seconds."""
        fut: asyncio.Future[SlotFreed] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(model, [])
        waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(model, None)

    def notify(self, event: SlotFreed) -> None:
        if not event.free:
            return
        for listener in list(self._listeners):
            listener(event)
        for fut in self._waiters.get(event.model, ()):
            if not fut.done():
                fut.set_result(event)


class AffinityMap:
    """Conversation key → pod, least recently used first out, entries expiring after ``ttl``."""

    def __init__(self, clock: Callable[[], float], size: int = 10_000, ttl: float = 1800.0):
        self.clock = clock
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        pod, expires = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)  # a conversation in use is the last to go
        return pod

    def put(self, key: str, pod: str) -> None:
        self._entries[key] = (pod, self.clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
