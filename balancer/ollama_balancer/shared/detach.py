"""Store operations that run to their end whatever becomes of the request that asked.

redis-py drops a connection whose command is cancelled before its reply was read (it
cannot tell where the reply would have stopped), and a client that leaves cancels its
request's handler.  Run in the handler, a store operation would cost a reconnect each time
a client left at the wrong moment, and a lease granted to a handler already gone would
hold its slot until its TTL.  :class:`Detached` runs the operation as its own task: a
cancelled caller stops waiting, the operation completes on its connection, and ``undo``
gives back what the caller never received (a lease, a quota ticket, a load lock).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Detached"]

T = TypeVar("T")


class Detached:
    """The operations of cancelled callers still running (and their undoing)."""

    def __init__(self) -> None:
        self._orphans: set[asyncio.Future[Any]] = set()

    @property
    def pending(self) -> int:
        return len(self._orphans)

    async def run(
        self,
        op: Coroutine[Any, Any, T],
        undo: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """``op``'s result; if the caller is cancelled first, ``op`` goes on, and ``undo``
        receives its result."""
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

    async def drain(self) -> None:
        """Until every orphaned operation (and what undoes it) has ended."""
        while self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)
