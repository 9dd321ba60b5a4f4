"""DNS and static discovery against the real resolver."""

from __future__ import annotations

import asyncio
import socket

from ollama_balancer.discovery import DnsDiscovery, StaticDiscovery
from ollama_balancer.settings import DiscoveryKind, DiscoverySettings
from ollama_wire.backend import Backend
from ollama_wire.hosts import parse_backends
from tests.harness.discovery import running


def dns(name: str, port: int = 11434) -> DiscoverySettings:
    return DiscoverySettings(kind=DiscoveryKind.DNS, dns_name=name, dns_port=port)


async def test_static_publishes_its_list_once() -> None:
    backends = parse_backends(["a=http://127.0.0.2:11434", "http://127.0.0.3:11434"])
    async with running(StaticDiscovery(backends)) as rec:
        await rec.wait_names("a", "127.0.0.3:11434")
        await asyncio.sleep(0.05)
    assert len(rec.sets) == 1


async def test_dns_resolves_localhost() -> None:
    discovery = DnsDiscovery(dns("localhost", port=11500), interval=0.05)
    async with running(discovery) as rec:
        latest = await rec.wait_for(lambda s: "127.0.0.1:11500" in s)
        await asyncio.sleep(0.3)  # several more resolutions with the same answer
    assert latest["127.0.0.1:11500"] == "http://127.0.0.1:11500"
    assert set(latest) <= {"127.0.0.1:11500", "[::1]:11500"}
    assert len(rec.sets) == 1  # published only when the answer changes


async def test_dns_failure_publishes_nothing() -> None:
    discovery = DnsDiscovery(dns("no-such-host.invalid"), interval=0.05)
    async with running(discovery) as rec:
        async with asyncio.timeout(10):
            while discovery.failures < 2:
                await asyncio.sleep(0.02)
    assert rec.sets == []


class FlakyDns(DnsDiscovery):
    """The real resolver once, then failures: the last good answer must be kept."""

    calls = 0

    async def resolve(self) -> list[Backend]:
        self.calls += 1
        if self.calls == 1:
            return await super().resolve()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


async def test_dns_keeps_last_set_on_failure() -> None:
    discovery = FlakyDns(dns("localhost"), interval=0.02)
    async with running(discovery) as rec:
        await rec.wait_for(lambda s: "127.0.0.1:11434" in s)
        async with asyncio.timeout(10):
            while discovery.failures < 3:
                await asyncio.sleep(0.02)
    assert len(rec.sets) == 1 and rec.sets[0]
