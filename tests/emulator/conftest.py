"""Fixtures: real emulated nodes on loopback, at 1/100 of real time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ollama_emulator import (
    EmulatedFleet,
    EmulatedNode,
    FleetConfig,
    ModelSpec,
    NodeConfig,
    default_catalogue,
)

GIB = 2**30
TIME_SCALE = 0.01

#: Small, round models so VRAM arithmetic in tests is obvious.
TEST_MODELS = [
    ModelSpec(name="tiny:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    ModelSpec(name="small:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    ModelSpec(name="other:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    # 200 tokens at 10/s: 20 emulated seconds, 0.2 s real — time to disconnect mid-stream.
    ModelSpec(name="slow:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=10,
              response_tokens=200, context_length=8192, embedding_length=64),
    ModelSpec(name="kv:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=65536, kv_bytes_per_token=2**15),
]  # fmt: skip
CATALOGUE = default_catalogue().with_specs(TEST_MODELS)

MakeNode = Callable[..., Awaitable[EmulatedNode]]


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """``await make_node(vram_bytes=..., installed=[...])``: one started node (port 0)."""
    fleets: list[EmulatedFleet] = []

    async def make(time_scale: float = TIME_SCALE, **overrides: Any) -> EmulatedNode:
        settings: dict[str, Any] = {
            "name": f"node-{len(fleets)}",
            "host": "127.0.0.1",
            "installed": [
                "llama3.2",
                "nomic-embed-text",
                "tiny:1b",
                "small:1b",
                "other:1b",
                "slow:1b",
            ],
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


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` (state changes in the same loop, so 1 ms polls are plenty)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)
