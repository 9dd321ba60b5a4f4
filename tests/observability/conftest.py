"""Balancer apps in front of emulated Ollama nodes, all real loopback servers: the
observability suite's ``rig_factory`` (several replicas, a faster poll), on the loop
production runs on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from ollama_emulator import NodeConfig
from tests.harness.fleet import Rig, RigFactory, start_rig
from tests.harness.loop import pytest_asyncio_loop_factories  # noqa: F401


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    stack = AsyncExitStack()
    session = await stack.enter_async_context(aiohttp.ClientSession())

    async def make(nodes: list[NodeConfig], **kw: Any) -> Rig:
        kw.setdefault("poll_interval", 0.2)
        return await start_rig(stack, session, nodes, **kw)

    try:
        yield make
    finally:
        await stack.aclose()
