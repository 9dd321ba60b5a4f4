"""One emulated Ollama server: its state (``state.py``) plus a socket, above the app.

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
from .config import NodeConfig
from .state import NodeState

__all__ = ["EmulatedNode"]


class EmulatedNode(NodeState):
    """A :class:`~.state.NodeState` with a socket: the app is built on the state, per listen."""

    def __init__(self, config: NodeConfig, catalogue: Catalogue, time_scale: float = 1.0) -> None:
        super().__init__(config, catalogue, time_scale)
        self._runner: web.AppRunner | None = None
        self._away: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Load the start-up models, start the scheduler loop and listen."""
        self.scheduler.start()
        self.preload()
        await self.start_listening()

    async def start_listening(self) -> None:
        """(Re)open the socket on the same address; after the first start the port is fixed."""
        if self._runner is not None:
            return
        # Going away cuts in-flight requests almost at once (0 would mean "wait forever").
        # Bodies arrive as sent: Ollama decodes zstd on a few /v1 paths only, and nothing
        # else (aiohttp would inflate gzip everywhere and refuse zstd in plain text).
        runner = web.AppRunner(
            build_app(self, go_away=self.go_away),
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
        await self.unload_all()
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
