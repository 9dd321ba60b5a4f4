"""Static discovery: a fixed list of Ollama servers (parsed by :mod:`ollama_wire.hosts`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ollama_wire.backend import Backend

from ..backends import Publish

__all__ = ["StaticDiscovery"]


class StaticDiscovery:
    """Publishes one fixed set, then waits to be cancelled."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = tuple(backends)

    async def run(self, publish: Publish) -> None:
        publish(list(self.backends))
        await asyncio.get_running_loop().create_future()  # until cancelled
