"""One emulated Ollama server: state (library, scheduler, puller, faults, stats) plus a socket.

The state outlives the socket, so :meth:`EmulatedNode.stop_listening` /
:meth:`EmulatedNode.start_listening` behave like a network partition (the
models stay loaded), while :meth:`EmulatedNode.restart` behaves like a pod
restart (nothing loaded, counters kept).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from .app import build_app
from .catalogue import Catalogue
from .clock import ScaledClock
from .config import NodeConfig
from .faults import Faults
from .registry import Library, Puller
from .scheduler import Scheduler
from .stats import Stats

__all__ = ["EmulatedNode"]


class EmulatedNode:
    def __init__(self, config: NodeConfig, catalogue: Catalogue, time_scale: float = 1.0) -> None:
        self.config = config
        self.catalogue = catalogue
        self.clock = ScaledClock(time_scale)
        self.stats = Stats()
        self.faults = Faults()
        self.library = Library(self.clock)
        self.scheduler = Scheduler(config, self.clock, self.stats)
        # Ollama reports pull progress about every 60 ms; scaled, but never a busy loop.
        interval = max(0.005, 0.06 * time_scale)
        self.puller = Puller(
            catalogue, self.library, self.clock, self.stats, config.pull_bandwidth, interval
        )
        self.host = config.host
        self.port = config.port
        self._runner: web.AppRunner | None = None
        self._away: asyncio.Task[None] | None = None
        for name in (*config.installed, *config.loaded):
            if self.library.find(name) is None:
                spec = catalogue[name]
                self.library.install(name, spec)
                self.puller.mark_installed(spec)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Load the start-up models, start the scheduler loop and listen."""
        self.scheduler.start()
        self._preload()
        await self.start_listening()

    def _preload(self) -> None:
        for name in self.config.loaded:
            spec = self.catalogue[name]
            if self.scheduler.runner_for(spec) is None:
                self.scheduler.preload(
                    spec, self.catalogue_name(name), self.config.preload_keep_alive
                )

    def catalogue_name(self, name: str) -> str:
        model = self.library.find(name)
        return model.display if model else name

    async def start_listening(self) -> None:
        """(Re)open the socket on the same address; after the first start the port is fixed."""
        if self._runner is not None:
            return
        # Going away cuts in-flight requests almost at once (0 would mean "wait forever").
        # Bodies arrive as sent: Ollama decodes zstd on a few /v1 paths only, and nothing
        # else (aiohttp would inflate gzip everywhere and refuse zstd in plain text).
        runner = web.AppRunner(
            build_app(self),
            handler_cancellation=True,
            shutdown_timeout=0.01,
            access_log=None,
            auto_decompress=False,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop_listening(self) -> None:
        """Go away: refuse connections and cut open ones (in-flight requests are cancelled)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def go_away(self, seconds: float) -> None:
        """Stop listening now and come back after ``seconds`` of emulated time."""

        async def away() -> None:
            await asyncio.sleep(0.05)  # let the control request that asked for it be answered
            await self.stop_listening()
            await self.clock.sleep(seconds)
            await self.start_listening()

        if self._away is None or self._away.done():
            self._away = asyncio.create_task(away())

    async def restart(self) -> None:
        """A pod restart: connections cut, every model unloaded, up again with start-up models."""
        await self.stop_listening()
        await self.scheduler.close()
        self.scheduler = Scheduler(self.config, self.clock, self.stats)
        await self.start()

    async def stop(self) -> None:
        if self._away is not None:
            self._away.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._away
        await self.stop_listening()
        await self.scheduler.close()
        await self.puller.close()

    def __repr__(self) -> str:
        return f"<EmulatedNode {self.name} {self.url}>"
