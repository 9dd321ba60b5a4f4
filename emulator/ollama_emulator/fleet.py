"""Start and stop every node of a :class:`~.config.FleetConfig`, and the registry, in one loop."""

from __future__ import annotations

import asyncio
from types import TracebackType

from .config import FleetConfig
from .node import EmulatedNode
from .registry_server import EmulatedRegistry

__all__ = ["EmulatedFleet"]


class EmulatedFleet:
    """``async with EmulatedFleet(config) as fleet: fleet.nodes[0].url``."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.nodes = [EmulatedNode(n, config.catalogue, config.time_scale) for n in config.nodes]
        self.registry = EmulatedRegistry(
            config.catalogue, bind=config.registry_bind, port=config.registry_port
        )
        """The registry the nodes pull from, serving its manifests at ``registry.url``."""

    def node(self, name: str) -> EmulatedNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    async def start(self) -> None:
        try:
            await self.registry.start()
            for node in self.nodes:
                await node.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))
        await self.registry.stop()

    async def __aenter__(self) -> EmulatedFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
