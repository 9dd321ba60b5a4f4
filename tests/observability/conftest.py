"""Balancer apps in front of emulated Ollama nodes, all real loopback servers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ollama_balancer.state import BALANCER, Balancer
from ollama_emulator import EmulatedFleet, EmulatedNode, NodeConfig
from tests.balancer.conftest import pytest_asyncio_loop_factories  # noqa: F401
from tests.rig import start_balanced_fleet, until

__all__ = ["Rig", "RigFactory", "Scrape", "labels", "node", "until"]

Labels = frozenset[tuple[str, str]]


def labels(**kw: str) -> Labels:
    return frozenset(kw.items())


@dataclass
class Scrape:
    """Parsed /metrics: (sample name, labels) → value, plus the raw text."""

    text: str
    values: dict[tuple[str, Labels], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls(text)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.values[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def get(self, name: str, **kw: str) -> float | None:
        return self.values.get((name, labels(**kw)))

    def series(self, name: str) -> dict[Labels, float]:
        return {lab: v for (n, lab), v in self.values.items() if n == name}


@dataclass
class Rig:
    fleet: EmulatedFleet
    apps: list[web.Application]
    urls: list[str]
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.urls[0]

    def bal(self, i: int = 0) -> Balancer:
        return self.apps[i][BALANCER]

    def node(self, name: str) -> EmulatedNode:
        return self.fleet.node(name)

    async def poll(self) -> None:
        for app in self.apps:
            poller = app[BALANCER].poller
            assert poller is not None
            await poller.poll_all()

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


def node(name: str, installed: Sequence[str], loaded: Sequence[str] = (), **kw: Any) -> NodeConfig:
    return NodeConfig(
        name=name, host="127.0.0.1", port=0, installed=list(installed), loaded=list(loaded), **kw
    )


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    stack = AsyncExitStack()
    session = await stack.enter_async_context(aiohttp.ClientSession())

    async def make(nodes: list[NodeConfig], **kw: Any) -> Rig:
        kw.setdefault("poll_interval", 0.2)
        fleet, apps, urls = await start_balanced_fleet(stack, nodes, **kw)
        return Rig(fleet, apps, urls, session)

    try:
        yield make
    finally:
        await stack.aclose()
