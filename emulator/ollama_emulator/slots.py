"""A runner's slots: who waits for one, first come first served, and the sequences holding them.

The choice of a slot and what its cache serves are :mod:`.prompt_cache`'s;
this module adds the waiting (unbounded, cancellable, in arrival order, like
llama-server's deferred tasks) and keeps track of the :class:`~.sequence.Sequence`
tasks, which outlive the requests that started them when a client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from .prompt_cache import Placement, PromptCache

__all__ = ["SlotPool"]


class SlotPool:
    def __init__(self, cache: PromptCache) -> None:
        self.cache = cache
        self._waiters: deque[tuple[asyncio.Future[Placement], str | None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> int:
        return len(self.cache.slots) - self.cache.free

    @property
    def waiting(self) -> int:
        return sum(1 for future, _ in self._waiters if not future.done())

    async def acquire(self, prompt: str | None) -> Placement:
        """A slot for ``prompt`` (None: not a generation), as soon as one is free; cancellable."""
        if self.cache.free and not self._waiters:
            return self.cache.place(prompt)
        future: asyncio.Future[Placement] = asyncio.get_running_loop().create_future()
        entry = (future, prompt)
        self._waiters.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result().slot)  # handed a slot just as the client left
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def release(self, slot: int, text: str | None = None) -> None:
        """Slot ``slot`` is free; its cache holds ``text`` (None: unchanged)."""
        self.cache.release(slot, text)
        while self._waiters and self.cache.free:
            future, prompt = self._waiters.popleft()
            if not future.done():
                future.set_result(self.cache.place(prompt))

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """A slot for work that leaves its cache alone (embeddings)."""
        placement = await self.acquire(None)
        try:
            yield
        finally:
            self.release(placement.slot)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """The runner is gone (unloaded): its sequences stop where they are."""
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
