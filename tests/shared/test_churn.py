"""No reconnect churn: a client that leaves never costs a connection to the store.

redis-py drops a connection whose command is cancelled before its reply was read.  The
shared state runs every store operation detached from its caller, so a cancelled request
stops waiting while the operation completes on its connection, and what the caller never
received (a lease, a quota ticket, a load lock) is given back.  Real redis-server, real
balancer, real emulator; the reconnects are read from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TypeVar

import aiohttp
import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer
from prometheus_client import CollectorRegistry

from ollama_balancer.core.auth import ApiKey
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.metrics import STORE_RECONNECTS, SharedMetrics
from ollama_balancer.shared.store import RedisState
from ollama_emulator import NodeConfig
from tests.harness.eventually import eventually
from tests.harness.fleet import start_balanced_fleet

pytestmark = pytest.mark.timeout(90)

POD, MODEL = "gpu-0", "llama3:latest"
T = TypeVar("T")


async def _cancel_mid_flight(op: asyncio.Future[T], spins: int) -> T | None:
    """Cancel ``op`` after ``spins`` turns of the loop; its result if it ended first."""
    for _ in range(spins):
        await asyncio.sleep(0)
    op.cancel()
    try:
        return await op
    except asyncio.CancelledError:
        return None


async def test_a_bare_store_op_cancelled_mid_reply_drops_its_connection(
    redis_server: RedisServer,
) -> None:
    """The mechanism the shared state guards against, and the counter that sees it."""
    redis_server.flush()
    store = RedisState(parse_store_url(redis_server.url), replica="bare", keys=Keys("churn"))
    await store.connect()
    try:
        for i in range(2000):
            op = asyncio.ensure_future(store.acquire(POD, MODEL, slots=10_000, request_id=str(i)))
            await _cancel_mid_flight(op, i % 12)
            await store.ping()  # the next command on a dropped connection opens it again
            if store.connection.reconnects:
                break
        assert store.connection.reconnects >= 1
    finally:
        await store.close()


async def test_cancelled_callers_cost_no_connection_and_keep_nothing(
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    registry = CollectorRegistry()
    keys = Keys("churn")
    store = RedisState(parse_store_url(redis_server.url), replica="r", keys=keys, op_timeout=1.0)
    state = FallbackState(
        store, LocalState(Ledger(), replica="r"), observer=SharedMetrics(registry)
    )
    await state.start()
    key = ApiKey("team", "0" * 64, max_concurrent=1000)
    cancelled = 0
    try:
        for i in range(300):
            spins = i % 12
            if i % 3 == 0:
                grant = await _cancel_mid_flight(
                    asyncio.ensure_future(state.acquire(POD, MODEL, slots=9999, request_id=str(i))),
                    spins,
                )
                cancelled += grant is None
                if grant is not None and grant.lease is not None:
                    await state.release(grant.lease)  # the caller got it: the caller gives back
            elif i % 3 == 1:
                verdict = await _cancel_mid_flight(
                    asyncio.ensure_future(state.admit(key, str(i))), spins
                )
                cancelled += verdict is None
                if verdict is not None and verdict.ticket is not None:
                    await state.finish_quota(verdict.ticket)
            else:
                owner = f"owner-{i}"
                got = await _cancel_mid_flight(
                    asyncio.ensure_future(state.lock_load(MODEL, owner, 5.0)), spins
                )
                cancelled += got is None
                if got:
                    await state.unlock_load(MODEL, owner)
        assert cancelled > 150  # most calls were cut short, at every stage of their trip
        await eventually(lambda: state.detached.pending == 0)
        assert state.up and state.link.fallbacks == 0
        assert store.connection.reconnects == 0
        assert registry.get_sample_value(STORE_RECONNECTS) == 0.0
        # What the cancelled callers never received was given back, in the store and here.
        raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert await raw.zcard(keys.lease(POD, MODEL)) == 0
            assert await raw.zcard(keys.quota_inflight("team")) == 0
            assert await raw.exists(keys.load_lock(MODEL)) == 0
        finally:
            await raw.aclose()
        assert state.occupancy().inflight(POD, MODEL) == 0
        assert state.local.occupancy().inflight(POD, MODEL) == 0
        assert not state.own_leases()
    finally:
        await state.close()


# ------------------------------------------------------------------ through the balancer
@pytest.fixture
async def balancer(redis_server: RedisServer) -> AsyncIterator[str]:
    redis_server.flush()
    async with AsyncExitStack() as stack:
        nodes = [
            NodeConfig(
                name="gpu-0",
                host="127.0.0.31",
                port=0,
                installed=["llama3.2:3b"],
                loaded=["llama3.2:3b"],
                num_parallel=64,
            )
        ]
        _fleet, _apps, (url,) = await start_balanced_fleet(
            stack, nodes, shared_state=redis_server.url, shared_state_timeout=1.0
        )
        yield url


async def _impatient(url: str, mode: str, rng: random.Random) -> None:
    """One request from a client that leaves: right after its answer, after the first
    streamed line, or at a random moment before any answer."""
    host, port = url.removeprefix("http://").split(":")
    stream = mode == "first line"
    body = json.dumps(
        {"model": "llama3.2:3b", "prompt": "hi", "stream": stream, "options": {"num_predict": 8}}
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    try:
        if mode == "after answer":
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        elif mode == "first line":
            await reader.readuntil(b"\r\n\r\n")
            await reader.readline()
        else:
            await asyncio.sleep(rng.uniform(0, 0.004))
    finally:
        writer.transport.abort()  # gone at once, no goodbye


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_clients_that_leave_cost_the_balancer_no_store_connection(
    balancer: str, redis_server: RedisServer
) -> None:
    rng = random.Random(24)
    modes = ["after answer", "first line", "before the answer"]
    for burst in range(6):
        await asyncio.gather(
            *(_impatient(balancer, modes[(burst + i) % 3], rng) for i in range(30))
        )
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with aiohttp.ClientSession() as session:
        try:
            # Every lease comes back (the balancer's releases run to their end).
            async def leases() -> int:
                total = 0
                async for key in raw.scan_iter("ollama-fleet:lease:*"):
                    total += int(await raw.zcard(key))
                return total

            await eventually(leases, "no lease left in the store", accept=lambda n: n == 0)
        finally:
            await raw.aclose()
        assert await _metric(session, balancer, STORE_RECONNECTS) == 0.0
        assert await _metric(session, balancer, "ollama_fleet_shared_state_fallbacks_total") == 0
        assert await _metric(session, balancer, "ollama_fleet_shared_state_up") == 1.0
