"""Balancer apps in front of an emulated Ollama fleet, every one a real loopback server.

:func:`start_balanced_fleet` starts the fleet and the balancers (the caller's exit stack
stops them); :class:`Rig` is the tests' handle on the result: one or more balancer
replicas, the emulated nodes, and a client session.  The ``rig_factory`` fixtures of the
conftests choose the polling defaults of their suites and build it with :func:`start_rig`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import Tracer

from ollama_balancer.app import create_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_balancer.state import BALANCER, Balancer
from ollama_emulator import (
    Catalogue,
    EmulatedFleet,
    EmulatedNode,
    FleetConfig,
    NodeConfig,
    default_catalogue,
)

from .eventually import eventually
from .scrape import Scrape

__all__ = ["Rig", "RigFactory", "node", "nodes", "start_balanced_fleet", "start_rig"]


async def start_balanced_fleet(
    stack: AsyncExitStack,
    nodes: list[NodeConfig],
    *,
    replicas: int = 1,
    time_scale: float = 0.01,
    seed: int = 0,
    catalogue: Catalogue | None = None,
    tracer: Tracer | None = None,
    **settings: Any,
) -> tuple[EmulatedFleet, list[web.Application], list[str]]:
    """Start the nodes and ``replicas`` balancers (each with its own seeded RNG) on loopback;
    ``stack`` stops them.  ``settings`` are settings by key (:meth:`BalancerSettings.build`);
    ``tracer`` traces the balancers' requests."""
    config = FleetConfig(
        nodes=nodes, catalogue=catalogue or default_catalogue(), time_scale=time_scale
    )
    fleet = await stack.enter_async_context(EmulatedFleet(config))
    balancer = BalancerSettings.build(
        host="127.0.0.1",
        port=0,
        backends=tuple(f"{n.name}={n.url}" for n in fleet.nodes),
        **settings,
    )
    apps, urls = [], []
    for i in range(replicas):
        app = create_app(balancer, rng=random.Random(seed + i), tracer=tracer)
        runner, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1.0)
        stack.push_async_callback(runner.cleanup)
        apps.append(app)
        urls.append(f"http://127.0.0.1:{port}")
    return fleet, apps, urls


@dataclass
class Rig:
    """Balancer replicas (``apps`` serving ``urls``; the first is *the* balancer) in front
    of ``fleet``, and a client ``session``."""

    fleet: EmulatedFleet
    apps: list[web.Application]
    urls: list[str]
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def app(self) -> web.Application:
        return self.apps[0]

    @property
    def bal(self) -> Balancer:
        return self.app[BALANCER]

    def node(self, name: str) -> EmulatedNode:
        return self.fleet.node(name)

    async def poll(self) -> None:
        """One poll of every pod by every replica, now."""
        for app in self.apps:
            poller = app[BALANCER].poller
            assert poller is not None
            await poller.poll_all()

    async def post(self, path: str, body: Any, **kw: Any) -> aiohttp.ClientResponse:
        return await self.session.post(self.url + path, json=body, **kw)

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        await eventually(cond, timeout=timeout)

    async def scrape(self, i: int = 0) -> Scrape:
        async with self.session.get(self.urls[i] + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return Scrape.parse(await resp.text())

    async def fleet_json(self, i: int = 0) -> dict[str, Any]:
        async with self.session.get(self.urls[i] + "/-/fleet") as resp:
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
            return doc

    async def generate(self, model: str, i: int = 0, **body: Any) -> tuple[int, list[Any]]:
        """A streamed /api/generate read to the end: (status, NDJSON lines)."""
        async with self.session.post(
            self.urls[i] + "/api/generate", json={"model": model, "prompt": "hi", **body}
        ) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, [json.loads(text)]
            if resp.content_type != "application/x-ndjson":
                return resp.status, [text]
            return resp.status, [json.loads(line) for line in text.splitlines() if line]


RigFactory = Callable[..., Awaitable[Rig]]
"""``await rig_factory(node_configs, **settings)``: the fixture the conftests provide."""


async def start_rig(
    stack: AsyncExitStack,
    session: aiohttp.ClientSession,
    node_configs: list[NodeConfig],
    **kw: Any,
) -> Rig:
    """A :class:`Rig` on ``node_configs``; ``kw`` as :func:`start_balanced_fleet` takes."""
    fleet, apps, urls = await start_balanced_fleet(stack, node_configs, **kw)
    return Rig(fleet, apps, urls, session)


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


def node(name: str, installed: Sequence[str], loaded: Sequence[str] = (), **kw: Any) -> NodeConfig:
    """One NodeConfig on 127.0.0.1 (a free port of its own)."""
    return NodeConfig(
        name=name, host="127.0.0.1", port=0, installed=list(installed), loaded=list(loaded), **kw
    )
