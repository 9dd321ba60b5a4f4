"""Fixtures: real emulated nodes on loopback, at 1/100 of real time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ollama_emulator import EmulatedFleet, EmulatedNode, FleetConfig, NodeConfig
from tests.harness.emulator import CATALOGUE, INSTALLED, TIME_SCALE, MakeNode


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """``await make_node(vram_bytes=..., installed=[...])``: one started node (port 0)."""
    fleets: list[EmulatedFleet] = []

    async def make(time_scale: float = TIME_SCALE, **overrides: Any) -> EmulatedNode:
        settings: dict[str, Any] = {
            "name": f"node-{len(fleets)}",
            "host": "127.0.0.1",
            "installed": list(INSTALLED),
        }
        settings.update(overrides)
        fleet = EmulatedFleet(
            FleetConfig(nodes=[NodeConfig(**settings)], catalogue=CATALOGUE, time_scale=time_scale)
        )
        await fleet.start()
        fleets.append(fleet)
        return fleet.nodes[0]

    yield make
    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
async def node(make_node: MakeNode) -> EmulatedNode:
    """A 24 GiB node with llama3.2 resident and a few models installed."""
    return await make_node(loaded=["llama3.2"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
