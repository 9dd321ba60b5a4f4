"""Balancer processes (``--shared-state`` on a real redis-server, or alone) behind a
round-robin nginx, in front of emulated Ollama pods: the replica suites' fleet.

The processes come from :mod:`bench.common` (the benchmarks start them the same way); the
caller's exit stack and ``Procs`` stop them, by PID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import common
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig, default_catalogue

from .eventually import eventually

__all__ = [
    "COLD",
    "SECOND_COLD",
    "TTL",
    "WARM",
    "Fleet",
    "burst",
    "chat",
    "nodes",
    "start",
    "until_shared",
]

WARM = "llama3.2:3b"
COLD = "qwen2.5:7b"
SECOND_COLD = "mistral:7b"
TTL = 3.0


@dataclass
class Fleet:
    fleet: EmulatedFleet
    procs: common.Procs
    session: aiohttp.ClientSession
    balancers: list[common.Proc] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    front: str = ""

    def node(self, name: str) -> Any:
        return next(n for n in self.fleet.nodes if n.name == name)

    def loads(self) -> int:
        return sum(n.stats.loads_started for n in self.fleet.nodes)

    async def fleet_view(self, url: str) -> dict[str, Any]:
        async with self.session.get(url + "/-/fleet") as resp:
            doc: dict[str, Any] = await resp.json()
            return doc

    async def stream(self, url: str, content: str) -> None:
        """A streamed chat through ``url``, read until it ends or the test cancels it."""
        body = {**chat(WARM, content), "stream": True}
        with suppress(aiohttp.ClientError, asyncio.CancelledError):
            async with self.session.post(url + "/api/chat", json=body) as resp:
                async for _ in resp.content:
                    pass

    async def post(self, url: str, body: dict[str, Any], **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.post(url, json=body, **kw) as resp:
            return resp.status, resp.headers, await resp.read()


def nodes(
    specs: Sequence[tuple[str, Sequence[str], Sequence[str]]], slots: int
) -> list[NodeConfig]:
    return [
        NodeConfig(
            name=name,
            host=f"127.0.0.{20 + i}",
            port=0,
            num_parallel=slots,
            installed=list(installed),
            loaded=list(loaded),
            preload_keep_alive=3600.0,
        )
        for i, (name, installed, loaded) in enumerate(specs)
    ]


async def start(
    stack: AsyncExitStack,
    procs: common.Procs,
    node_configs: list[NodeConfig],
    *,
    replicas: int,
    slots: int,
    redis_url: str | None,
    extra: Sequence[str] = (),
) -> Fleet:
    config = FleetConfig(nodes=node_configs, catalogue=default_catalogue(), time_scale=0.02)
    emulated = await stack.enter_async_context(EmulatedFleet(config))
    session = await stack.enter_async_context(aiohttp.ClientSession())
    f = Fleet(emulated, procs, session)
    urls = [n.url for n in emulated.nodes]
    flags = ["--poll-interval", "0.3", "--log-level", "warning", *extra]
    if redis_url:
        flags += [
            "--shared-state", redis_url,
            "--lease-ttl", str(TTL), "--lease-renew-interval", "1",
        ]  # fmt: skip
    for _ in range(replicas):
        proc, url = await asyncio.to_thread(
            common.start_balancer,
            procs,
            urls,
            extra=flags,
            backend_opts=f";slots={slots}",
            name=f"balancer-{len(f.balancers)}",
        )
        f.balancers.append(proc)
        f.urls.append(url)
    _, f.front = await asyncio.to_thread(
        common.start_nginx, procs, f.urls, balance="round_robin", name="front"
    )
    if redis_url:
        await until_shared(f, f.urls)
    return f


async def until_shared(f: Fleet, urls: Sequence[str], timeout: float = 15.0) -> None:
    """Until every replica at ``urls`` says its state is shared (the store answers)."""

    async def modes() -> list[str]:
        return [(await f.fleet_view(u))["shared_state"]["mode"] for u in urls]

    await eventually(
        modes,
        "every replica's state shared",
        accept=lambda m: all(mode == "shared" for mode in m),
        timeout=timeout,
        interval=0.1,
    )


def chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": False,
        "options": {"num_predict": 4},
        **extra,
    }


async def burst(f: Fleet, url: str, model: str, n: int) -> list[int]:
    answers = await asyncio.gather(
        *(f.post(url + "/api/chat", chat(model, f"q{i}")) for i in range(n))
    )
    return [status for status, _, _ in answers]
