"""Run a discovery loop in a task and record what it publishes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress

from ollama_balancer.backends import Discovery
from ollama_wire.backend import Backend


class Recorder:
    """The ``publish`` callback: keeps every published set, lets a test wait for one."""

    def __init__(self) -> None:
        self.sets: list[list[Backend]] = []
        self._changed = asyncio.Event()

    def __call__(self, backends: Sequence[Backend]) -> None:
        self.sets.append(list(backends))
        self._changed.set()

    @property
    def latest(self) -> dict[str, str] | None:
        """name → url of the last published set (None before the first publish)."""
        return None if not self.sets else {b.name: b.url for b in self.sets[-1]}

    async def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20.0
    ) -> dict[str, str]:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                latest = self.latest
                if latest is not None and predicate(latest):
                    return latest
                await self._changed.wait()

    async def wait_names(self, *names: str, timeout: float = 20.0) -> dict[str, str]:
        return await self.wait_for(lambda s: set(s) == set(names), timeout)


def discovery_threads() -> list[str]:
    """Threads a discovery loop left behind (none: all of them run on the event loop)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("k8s-discovery")]


async def leftover_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks started since ``before`` that are still running (one loop pass to settle)."""
    await asyncio.sleep(0)
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() - before if t is not current}


@asynccontextmanager
async def running(discovery: Discovery) -> AsyncIterator[Recorder]:
    """Run ``discovery`` until the block ends; then cancel it, and check it stopped cleanly
    (promptly, without error, leaving no task or thread behind)."""
    recorder = Recorder()
    before = asyncio.all_tasks()
    task = asyncio.create_task(discovery.run(recorder))
    try:
        yield recorder
        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
    finally:
        task.cancel()
        async with asyncio.timeout(10):
            with suppress(asyncio.CancelledError):
                await task
    assert await leftover_tasks(before) == set()
    assert discovery_threads() == []
