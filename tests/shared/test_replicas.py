"""Replicas as one: three real balancer processes sharing state through a real redis-server,
behind a round-robin nginx, in front of emulated Ollama pods.

* a cold burst starts as many loads as one replica would;
* six long streams fill three pods × two slots exactly, none waiting inside Ollama;
* a key's requests-per-minute hold across the replicas;
* a replica killed with SIGKILL frees its slots within the lease TTL;
* the store stopping and starting again fails no request, and sharing resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from bench.redis_server import RedisServer

from bench import common
from ollama_balancer.core.auth import hash_key
from tests.harness.replicas import (
    COLD,
    SECOND_COLD,
    TTL,
    WARM,
    burst,
    chat,
    nodes,
    start,
    until_shared,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[AsyncExitStack, common.Procs]]:
    procs = common.Procs(tmp_path)
    async with AsyncExitStack() as stack:
        stack.callback(procs.stop_all)  # every process this test started, by PID
        yield stack, procs


# ------------------------------------------------------------------------------- the tests
async def test_a_cold_burst_through_three_replicas_loads_like_one(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    exits, procs = stack
    spec = [(n, [WARM, COLD], [WARM]) for n in ("a", "b", "c")]
    # One replica, alone: the reference.
    one = await start(exits, procs, nodes(spec, 8), replicas=1, slots=8, redis_url=None)
    assert await burst(one, one.front, COLD, 24) == [200] * 24
    alone = one.loads()
    assert alone >= 1
    # Three replicas sharing state, round-robin, on a fresh fleet.
    three = await start(exits, procs, nodes(spec, 8), replicas=3, slots=8, redis_url=redis_url)
    assert await burst(three, three.front, COLD, 24) == [200] * 24
    assert three.loads() == alone


async def test_six_streams_fill_three_pods_two_slots_each(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    exits, procs = stack
    spec = [(n, [WARM], [WARM]) for n in ("a", "b", "c")]
    f = await start(exits, procs, nodes(spec, 2), replicas=3, slots=2, redis_url=redis_url)
    for n in f.fleet.nodes:
        n.faults.slow(2000.0)  # streams that outlast the test

    tasks = [asyncio.ensure_future(f.stream(f.front, f"s{i}")) for i in range(6)]
    try:
        runners = lambda: [r for n in f.fleet.nodes for r in n.scheduler.runners.values()]  # noqa: E731
        async with asyncio.timeout(15):
            while sum(r.refcount for r in runners()) < 6:
                await asyncio.sleep(0.05)
        busy = {
            n.name: sum(r.in_flight for r in n.scheduler.runners.values()) for n in f.fleet.nodes
        }
        assert busy == {"a": 2, "b": 2, "c": 2}
        assert all(r.waiting == 0 for r in runners())
        view = await f.fleet_view(f.urls[0])
        assert view["inflight"] == 6  # one replica sees the whole fleet's occupancy
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_requests_per_minute_hold_across_replicas(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str, tmp_path: Path
) -> None:
    exits, procs = stack
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys:\n  - {{name: team, key_sha256: {hash_key('team-key')}, requests_per_minute: 30}}\n"
    )
    spec = [(n, [WARM], [WARM]) for n in ("a", "b")]
    f = await start(
        exits,
        procs,
        nodes(spec, 4),
        replicas=3,
        slots=4,
        redis_url=redis_url,
        extra=["--auth-file", str(keys)],
    )
    headers = {"Authorization": "Bearer team-key"}
    statuses: list[int] = []
    refusals: list[tuple[str, Any, Any]] = []
    for i in range(60):
        path = "/api/chat" if i % 2 else "/v1/chat/completions"
        body = chat(WARM, f"r{i}")
        status, resp_headers, raw = await f.post(f.front + path, body, headers=headers)
        statuses.append(status)
        if status == 429:
            refusals.append((path, resp_headers.get("Retry-After"), json.loads(raw)))
    assert 29 <= statuses.count(200) <= 31, statuses
    assert statuses.count(200) + statuses.count(429) == 60
    for path, retry_after, doc in refusals:
        assert retry_after is not None and int(retry_after) >= 1
        message = doc["error"] if path.startswith("/api/") else doc["error"]["message"]
        assert "request rate limit" in message


async def test_a_killed_replica_frees_its_slots_within_the_ttl(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    exits, procs = stack
    f = await start(
        exits, procs, nodes([("a", [WARM], [WARM])], 2), replicas=3, slots=2, redis_url=redis_url
    )
    f.node("a").faults.slow(2000.0)

    held = [asyncio.ensure_future(f.stream(f.urls[0], f"k{i}")) for i in range(2)]
    try:
        async with asyncio.timeout(15):
            while (await f.fleet_view(f.urls[1]))["inflight"] < 2:
                await asyncio.sleep(0.05)
        os.kill(f.balancers[0].popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        async with asyncio.timeout(TTL + 5):
            while (await f.fleet_view(f.urls[1]))["inflight"] > 0:
                await asyncio.sleep(0.1)
        assert time.monotonic() - killed_at <= TTL + 3
    finally:
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    f.node("a").faults.clear()
    status, headers, _ = await f.post(f.urls[1] + "/api/chat", chat(WARM, "after"))
    assert status == 200 and headers["X-Ollama-Backend"] == "node-0"


async def test_losing_the_store_fails_no_request_and_sharing_resumes(
    stack: tuple[AsyncExitStack, common.Procs], redis_server: RedisServer, redis_url: str
) -> None:
    exits, procs = stack
    spec = [(n, [WARM, COLD, SECOND_COLD], [WARM]) for n in ("a", "b", "c")]
    f = await start(exits, procs, nodes(spec, 8), replicas=3, slots=8, redis_url=redis_url)
    statuses: list[int] = []

    async def traffic(n: int) -> None:
        for i in range(n):
            status, _, _ = await f.post(f.front + "/api/chat", chat(WARM, f"t{i}"))
            statuses.append(status)

    flow = asyncio.ensure_future(asyncio.gather(traffic(40), traffic(40)))
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_server.stop)
        async with asyncio.timeout(10):
            while any([(await f.fleet_view(u))["shared_state"]["up"] for u in f.urls]):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # requests served with local state meanwhile
        await asyncio.to_thread(redis_server.start)
        await flow
    finally:
        if redis_server.proc is None:
            redis_server.start()
    assert statuses == [200] * 80
    await until_shared(f, f.urls)
    before = f.loads()
    assert await burst(f, f.front, SECOND_COLD, 24) == [200] * 24
    assert f.loads() - before == 1


async def test_a_slot_freed_on_one_replica_dispatches_a_request_waiting_on_another(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    exits, procs = stack
    f = await start(
        exits,
        procs,
        nodes([("a", [WARM], [WARM])], 2),
        replicas=2,
        slots=2,
        redis_url=redis_url,
        extra=["--queue"],
    )
    f.node("a").faults.slow(2000.0)

    held = [asyncio.ensure_future(f.stream(f.urls[0], f"h{i}")) for i in range(2)]
    try:
        async with asyncio.timeout(15):
            while (await f.fleet_view(f.urls[1]))["inflight"] < 2:
                await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(f.post(f.urls[1] + "/api/chat", chat(WARM, "queued")))
        async with asyncio.timeout(10):
            while not (await f.fleet_view(f.urls[1]))["queues"]:
                await asyncio.sleep(0.05)
        assert f.node("a").stats.requests["/api/chat"] == 2  # it waits in B, not in Ollama
        f.node("a").faults.clear()
        held[0].cancel()  # A's client leaves: A releases the lease, B hears of it
        freed_at = time.monotonic()
        async with asyncio.timeout(10):
            status, headers, _ = await waiting
        assert status == 200
        assert float(headers["X-Queue-Wait"]) > 0
        assert time.monotonic() - freed_at < 1.0
    finally:
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_a_tenant_on_one_replica_takes_back_a_slot_from_a_tenant_on_another(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    """One scheduler across replicas: the heavy tenant fills both slots through replica A;
    the light tenant's request on replica B is owed a share, so B takes one of A's slots back
    (A stops that stream at a frame's end and resumes it when a slot frees); the heavy
    answers still arrive whole."""
    exits, procs = stack
    f = await start(
        exits,
        procs,
        nodes([("a", [WARM], [WARM])], 2),
        replicas=2,
        slots=2,
        redis_url=redis_url,
        extra=["--queue", "--queue-policy", "reclaim", "--tenant-header", "X-Tenant"],
    )
    f.node("a").faults.slow(300.0)  # 24 tokens take a few seconds

    async def heavy(i: int) -> list[dict[str, Any]]:
        body = {**chat(WARM, f"heavy {i}"), "stream": True, "options": {}}
        lines: list[dict[str, Any]] = []
        async with f.session.post(
            f.urls[0] + "/api/chat", json=body, headers={"X-Tenant": "heavy"}
        ) as resp:
            async for raw in resp.content:
                lines.append(json.loads(raw))
        return lines

    streams = [asyncio.ensure_future(heavy(i)) for i in range(2)]
    try:
        async with asyncio.timeout(15):
            while f.node("a").stats.generations_started < 2:
                await asyncio.sleep(0.02)
        status, _, _ = await f.post(
            f.urls[1] + "/api/chat", chat(WARM, "light"), headers={"X-Tenant": "light"}
        )
        assert status == 200
        answers = await asyncio.gather(*streams)
        for lines in answers:  # each heavy answer whole: every token, one final line
            assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"]
            assert lines[-1]["eval_count"] == len(lines) - 1 == 24
        a_metrics = await fetch_text(f, f.urls[0] + "/metrics")
        b_metrics = await fetch_text(f, f.urls[1] + "/metrics")
        assert 'ollama_fleet_preemptions_total{class="standard"' in b_metrics  # B asked
        assert 'ollama_fleet_resumes_total{model="llama3.2:3b",outcome="resumed"} 1.0' in a_metrics
        assert f.node("a").stats.continuation_prompt_tokens > 0
    finally:
        for t in streams:
            t.cancel()
        await asyncio.gather(*streams, return_exceptions=True)


async def fetch_text(f: Any, url: str) -> str:
    async with f.session.get(url) as resp:
        text: str = await resp.text()
        return text
