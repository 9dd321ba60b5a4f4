"""One scheduler across replicas, when one of them dies: two real balancer processes
(``--queue-policy reclaim``) sharing a real redis-server, in front of an emulated pod.

A replica killed with SIGKILL while its requests wait on the fleet-wide board loses no one
else's place: the other replica's waiting requests are still dispatched, in their order,
and the dead replica's entries leave the board by their TTL instead of holding the slots
the plan gave them.  (Fair shares across replicas under load: ``bench fairness``, and its
smoke run in tests/bench/test_fairness.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench import common
from tests.harness.eventually import eventually
from tests.harness.replicas import TTL, WARM, Fleet, chat, nodes, start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

#: Where the board keeps waiting requests (the balancer's default key prefix).
WAITERS = "ollama-fleet:waiter"
#: One class owns the whole pool, so that the holders' unresumable work keeps its slots:
#: the test is about places in the queue, not about reclaim.
FLAGS = [
    "--queue", "--queue-policy", "reclaim", "--tenant-header", "X-Tenant",
    "--queue-critical", "share=0", "--queue-batch", "share=0", "--queue-standard", "share=1",
]  # fmt: skip


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[AsyncExitStack, common.Procs]]:
    procs = common.Procs(tmp_path)
    async with AsyncExitStack() as stack:
        stack.callback(procs.stop_all)  # every process this test started, by PID
        yield stack, procs


async def _hold(f: Fleet, url: str, i: int) -> None:
    """A streamed non-raw generate (it cannot be resumed, so never preempted), read until
    the test cancels it: its client leaving frees the slot."""
    body = {"model": WARM, "prompt": f"hold {i}", "stream": True}
    with suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with f.session.post(
            url + "/api/generate", json=body, headers={"X-Tenant": "hold"}
        ) as resp:
            async for _ in resp.content:
                pass


async def _waiting(raw: aioredis.Redis, tenant: str) -> int:
    """The board's waiting entries of ``tenant``, fleet-wide, as the store has them."""
    docs = await cast(Awaitable[dict[str, str]], raw.hgetall(WAITERS))
    return sum(1 for d in docs.values() if json.loads(d).get("t") == tenant)


async def test_a_dead_replicas_waiters_leave_the_board_and_the_others_keep_their_order(
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
        extra=FLAGS,
    )
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    exits.push_async_callback(raw.aclose)
    live_url, doomed_url = f.urls
    node = f.node("a")
    node.faults.slow(2000.0)  # the holders outlast the test until they are let go
    holders = [asyncio.ensure_future(_hold(f, live_url, i)) for i in range(2)]
    doomed: list[asyncio.Future[Any]] = []
    live: list[asyncio.Future[Any]] = []
    try:
        async with asyncio.timeout(15):
            while node.stats.generations_started < 2:
                await asyncio.sleep(0.02)
        # The doomed replica's requests wait first ...
        for i in range(2):
            doomed.append(
                asyncio.ensure_future(
                    f.post(doomed_url + "/api/chat", chat(WARM, f"doomed {i}"),
                           headers={"X-Tenant": "doomed"})
                )
            )  # fmt: skip
            await eventually(lambda: _waiting(raw, "doomed"), accept=lambda n: n == i + 1)  # noqa: B023
        # ... then the living replica's, one after another: their order is their arrival.
        for i in range(3):
            live.append(
                asyncio.ensure_future(
                    f.post(live_url + "/api/chat", chat(WARM, f"live {i}"),
                           headers={"X-Tenant": "live"})
                )
            )  # fmt: skip
            await eventually(lambda: _waiting(raw, "live"), accept=lambda n: n == i + 1)  # noqa: B023
        assert node.stats.generations_started == 2  # everyone waits in the balancers

        os.kill(f.balancers[1].popen.pid, signal.SIGKILL)
        killed = time.monotonic()
        node.faults.clear()
        for t in holders:
            t.cancel()  # both slots free now; the plan may still give them to the dead
        answers = await asyncio.wait_for(asyncio.gather(*live), TTL + 10)
        served = time.monotonic() - killed
        assert [status for status, _, _ in answers] == [200] * 3
        # The dead replica's places went with its heartbeat, not with anyone else's.
        await eventually(lambda: _waiting(raw, "doomed"), accept=lambda n: n == 0, timeout=5)
        assert await _waiting(raw, "live") == 0
        # Served without waiting for the dead replica's entries to expire (at worst they would
        # hold a plan's grant for one TTL).
        assert served < TTL + 5
        # The living tenant's requests took the slots in their order.
        started = [
            (g["started_at"], g["prompt_head"])
            for g in node.stats.records()
            if "live" in g["prompt_head"]
        ]
        order = [head for _, head in sorted(started)]
        assert [next(f"live {i}" for i in range(3) if f"live {i}" in h) for h in order] == [
            "live 0",
            "live 1",
            "live 2",
        ]
        doomed_done = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientError) for r in doomed_done), doomed_done
        assert not any("doomed" in g["prompt_head"] for g in node.stats.records())
    finally:
        for task in (*holders, *doomed, *live):
            task.cancel()
        await asyncio.gather(*holders, *doomed, *live, return_exceptions=True)


async def test_one_tenants_requests_waiting_on_two_replicas_are_served_in_arrival_order(
    stack: tuple[AsyncExitStack, common.Procs], redis_url: str
) -> None:
    """Each replica plans the pool with its own waiting requests as its queue has them and
    the others' as the board has them: both must carry the same arrival.  (A board entry
    posted before its request was enqueued said it arrived when the host's clock started:
    every replica then put the others' requests, hours "older", ahead of its own and left
    the free slots to them, while the others did the same: nobody bound, everyone waited
    for the wait room's expiry.)"""
    exits, procs = stack
    f = await start(
        exits,
        procs,
        nodes([("a", [WARM], [WARM])], 1),
        replicas=2,
        slots=1,
        redis_url=redis_url,
        extra=FLAGS,
    )
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    exits.push_async_callback(raw.aclose)
    node = f.node("a")
    node.faults.slow(2000.0)  # the holder outlasts the test until it is let go
    holder = asyncio.ensure_future(_hold(f, f.urls[0], 0))
    waiting: list[asyncio.Future[Any]] = []
    try:
        async with asyncio.timeout(15):
            while node.stats.generations_started < 1:
                await asyncio.sleep(0.02)
        # One tenant's requests, the first on one replica, the second on the other.
        for i, url in enumerate(f.urls):
            waiting.append(
                asyncio.ensure_future(
                    f.post(url + "/api/chat", chat(WARM, f"queued {i}"),
                           headers={"X-Tenant": "one"})
                )
            )  # fmt: skip
            await eventually(lambda: _waiting(raw, "one"), accept=lambda n: n == i + 1)  # noqa: B023
        # The board has each at its arrival (the store's clock, ms): moments ago.
        seconds, micros = await raw.time()
        now_ms = seconds * 1000 + micros // 1000
        docs = await cast(Awaitable[dict[str, str]], raw.hgetall(WAITERS))
        ages = [now_ms - json.loads(d)["a"] for d in docs.values()]
        assert len(ages) == 2
        assert all(0 <= age < 15_000 for age in ages), ages

        node.faults.clear()
        holder.cancel()  # the slot is free: the earlier request's replica binds it
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 20)
        assert [status for status, _, _ in answers] == [200, 200]
        started = sorted(
            (g["started_at"], g["prompt_head"])
            for g in node.stats.records()
            if "queued" in g["prompt_head"]
        )
        assert [("queued 0" in h, "queued 1" in h) for _, h in started] == [
            (True, False),
            (False, True),
        ]
    finally:
        for task in (holder, *waiting):
            task.cancel()
        await asyncio.gather(holder, *waiting, return_exceptions=True)
