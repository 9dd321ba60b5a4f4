"""Balancer apps in front of an emulated Ollama fleet, every one a real loopback server.

Shared by the balancer and observability suites: each wraps the result in its own
``Rig`` view, but the fleet and the balancers start (and stop, with the exit stack)
here only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from opentelemetry.trace import Tracer

from ollama_balancer.app import create_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_emulator import (
    Catalogue,
    EmulatedFleet,
    FleetConfig,
    NodeConfig,
    default_catalogue,
)

__all__ = ["start_balanced_fleet", "until"]


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


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``cond`` (state of real servers) to hold; fail the test after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)
