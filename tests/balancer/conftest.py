"""A balancer in front of emulated Ollama nodes, all real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ollama_balancer.state import BALANCER, Balancer
from ollama_emulator import EmulatedFleet, NodeConfig
from ollama_wire.loop import loop_factory
from tests.rig import start_balanced_fleet, until


@dataclass
class Rig:
    fleet: EmulatedFleet
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def bal(self) -> Balancer:
        return self.app[BALANCER]

    def node(self, name: str) -> Any:
        return next(n for n in self.fleet.nodes if n.name == name)

    async def poll(self) -> None:
        assert self.bal.poller is not None
        await self.bal.poller.poll_all()

    async def post(self, path: str, body: Any, **kw: Any) -> aiohttp.ClientResponse:
        return await self.session.post(self.url + path, json=body, **kw)

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        await until(cond, timeout)


RigFactory = Callable[..., Awaitable[Rig]]


def nodes(*specs: tuple[str, Sequence[str], Sequence[str]], **kw: Any) -> list[NodeConfig]:
    """(name, installed, loaded) triples → NodeConfigs on distinct loopback addresses."""
    return [
        NodeConfig(
            name=name,
            host=f"127.0.0.{10 + i}",
            port=0,
            installed=list(installed),
            loaded=list(loaded),
            **kw,
        )
        for i, (name, installed, loaded) in enumerate(specs)
    ]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The balancer's tests run on the loop production runs on (ollama_wire.loop): uvloop,
    unless OLLAMA_FLEET_LOOP=asyncio."""
    factory = loop_factory()
    return {"uvloop": factory} if factory is not None else {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    stack = AsyncExitStack()
    session = await stack.enter_async_context(aiohttp.ClientSession())

    async def make(node_configs: list[NodeConfig], **kw: Any) -> Rig:
        for name, value in (
            ("poll_interval", 0.25),
            ("poll_timeout", 1.0),
            ("connect_timeout", 1.0),
        ):
            kw.setdefault(name, value)
        fleet, (app,), (url,) = await start_balanced_fleet(stack, node_configs, **kw)
        return Rig(fleet, url, app, session)

    yield make
    await stack.aclose()
