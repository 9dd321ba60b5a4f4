"""Redis Sentinel: ``shared_state: redis+sentinel://...`` follows a failover without a restart.

A real primary, a real replica and a real ``redis-sentinel`` (Debian packages) on loopback;
the primary is SIGKILLed mid-run.  Requests never fail meanwhile (local state serves), and
the replicas share again on the promoted replica with the leases they hold re-registered.
With ``rediss+sentinel://`` every hop (sentinel and data nodes) is TLS, checked against the
CA file, and the data nodes and the sentinel each want their own password from a file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import ollama
import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer, SentinelGroup, TlsFiles
from prometheus_client import CollectorRegistry
from redis.asyncio.sentinel import MasterNotFoundError

from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.settings import BalancerSettings
from ollama_balancer.shared.connection import _no_primary
from ollama_balancer.shared.factory import create_shared_state
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.metrics import STORE_RECONNECTS, SharedMetrics
from ollama_balancer.state import BALANCER
from ollama_emulator import NodeConfig
from tests.harness.eventually import eventually
from tests.harness.fleet import start_balanced_fleet

pytestmark = pytest.mark.timeout(90)

POD, MODEL = "gpu-0", "llama3:latest"
PASSWORD, SENTINEL_PASSWORD = "data-secret", "sentinel-secret"


@pytest.fixture(params=["plain", "tls"])
def group(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelGroup]:
    tls = TlsFiles.make(tmp_path / "tls") if request.param == "tls" else None
    g = SentinelGroup(
        tmp_path / "sentinel", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=tls
    )
    g.start()
    try:
        yield g
    finally:
        g.stop()


def _settings(group: SentinelGroup, tmp_path: Path, **keys: object) -> BalancerSettings:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "sentinel-password").write_text(SENTINEL_PASSWORD)
    tls = {"shared_state_ca_file": str(group.tls.ca)} if group.tls else {}
    return BalancerSettings.build(
        shared_state=group.url,
        shared_state_password_file=str(tmp_path / "password"),
        shared_state_sentinel_password_file=str(tmp_path / "sentinel-password"),
        shared_state_timeout=0.5,
        **tls,
        **keys,
    )


async def _leases(group: SentinelGroup, node: RedisServer, keys: Keys) -> int:
    client = aioredis.Redis(
        host="127.0.0.1",
        port=node.port,
        password=PASSWORD,
        ssl=group.tls is not None,
        ssl_ca_certs=str(group.tls.ca) if group.tls else None,
    )
    try:
        return int(await client.zcard(keys.lease(POD, MODEL)))
    finally:
        await client.aclose()


async def test_failover_is_followed_without_a_restart(group: SentinelGroup, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    state = create_shared_state(
        _settings(group, tmp_path), Ledger(), observer=SharedMetrics(registry)
    )
    assert isinstance(state, FallbackState)
    await state.start()
    try:
        assert state.up, state.status()
        assert str(state.status()["store"]).startswith(group.url.split("://")[0] + "://")
        keys = state.store.keys
        before = (await state.acquire(POD, MODEL, slots=4, request_id="1")).lease
        assert before is not None and before.shared
        old = group.primary()
        replica = next(n for n in group.nodes if n is not old)
        # The lease reached the replica before the crash (asynchronous replication).
        await eventually(lambda: _has(group, replica, keys, 1), "the lease on the replica")

        old.kill()
        during = (await state.acquire(POD, MODEL, slots=4, request_id="2")).lease
        assert during is not None  # served while the sentinel has not failed over yet
        new = await asyncio.to_thread(group.wait_failover, old)
        assert new is replica
        await eventually(lambda: state.up, timeout=20)
        # The same process, now on the promoted replica: both leases are there, and
        # sharing goes on (a new lease lands on the new primary).
        await eventually(lambda: _has(group, new, keys, 2), "both leases on the new primary")
        after = (await state.acquire(POD, MODEL, slots=4, request_id="3")).lease
        assert after is not None and after.shared
        assert await _leases(group, new, keys) == 3
        assert state.link.fallbacks >= 1
        assert (registry.get_sample_value(STORE_RECONNECTS) or 0) >= 1
        for lease in (before, during, after):
            await state.release(lease)
        assert await _leases(group, new, keys) == 0
    finally:
        await state.close()


async def _has(group: SentinelGroup, node: RedisServer, keys: Keys, n: int) -> bool:
    return await _leases(group, node, keys) == n


# ------------------------------------------------------------------ through the balancer
@pytest.fixture
async def balancers(group: SentinelGroup, tmp_path: Path) -> AsyncIterator[list[str]]:
    settings = _settings(group, tmp_path)
    async with AsyncExitStack() as stack:
        nodes = [
            NodeConfig(
                name=f"gpu-{i}",
                host=f"127.0.0.{41 + i}",
                port=0,
                installed=["llama3.2:3b"],
                loaded=["llama3.2:3b"],
                num_parallel=4,
            )
            for i in range(2)
        ]
        _fleet, apps, urls = await start_balanced_fleet(
            stack,
            nodes,
            replicas=2,
            shared_state=settings.shared.url,
            shared_state_password_file=settings.shared.password_file,
            shared_state_sentinel_password_file=settings.shared.sentinel_password_file,
            shared_state_ca_file=settings.shared.ca_file,
            shared_state_timeout=0.5,
        )
        await eventually(lambda: all(a[BALANCER].shared.status()["mode"] == "shared" for a in apps))
        yield urls


async def test_requests_never_fail_across_a_failover(
    group: SentinelGroup, balancers: list[str]
) -> None:
    async with AsyncExitStack() as stack:
        await _traffic_across_a_failover(group, balancers, stack)


async def _traffic_across_a_failover(
    group: SentinelGroup, balancers: list[str], stack: AsyncExitStack
) -> None:
    clients = [await stack.enter_async_context(ollama.AsyncClient(host=u)) for u in balancers]
    stop = asyncio.Event()
    answered: list[str] = []

    async def traffic(client: ollama.AsyncClient) -> None:
        while not stop.is_set():
            reply = await client.generate(
                model="llama3.2:3b", prompt="hi", options={"num_predict": 4}
            )
            answered.append(reply.response or "")

    workers = [asyncio.create_task(traffic(c)) for c in clients for _ in range(3)]
    try:
        await eventually(lambda: len(answered) >= 10)
        old = group.primary()
        old.kill()
        group.wait_failover(old)
        seen = len(answered)
        # Both replicas share again (no restart), and traffic flowed all along.
        await eventually(lambda: _all_shared_again(balancers), "both replicas to share again")
        await eventually(lambda: len(answered) >= seen + 10)
    finally:
        stop.set()
        await asyncio.gather(*workers)  # any failed request fails the test here
    assert all(answered)  # every answer had text


async def _all_shared_again(urls: list[str]) -> bool:
    """Every replica lost the store once (the old primary) and shares again (the new one)."""
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(url + "/-/fleet") as resp:
                status = (await resp.json())["shared_state"]
            if status["mode"] != "shared" or status["fallbacks"] < 1:
                return False
    return True


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            "No master found for 'fleet'",
            "the sentinels name no primary of 'fleet'",
            id="the sentinels answer: no primary (being failed over)",
        ),
        pytest.param(
            "No master found for 'fleet' : <redis.asyncio.client.Redis(<...(host=a,port=1)>)> - "
            "network:ConnectionError: Error 111 connecting to a:1. Connection refused., "
            "<redis.asyncio.client.Redis(<...>)> - AuthenticationError: invalid password",
            "the sentinels name no primary of 'fleet': ConnectionError: Error 111 connecting to "
            "a:1. Connection refused.; AuthenticationError: invalid password",
            id="each sentinel's error, without the clients' reprs",
        ),
    ],
)
def test_no_primary_says_what_each_sentinel_said(message: str, expected: str) -> None:
    assert _no_primary("fleet", MasterNotFoundError(message)) == expected
