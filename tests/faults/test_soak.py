"""20,000 requests through the balancer with random faults: no duplicates, flat memory."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from ollama_wire.logs import configure_logging
from tests.harness.fleet import RigFactory, nodes
from tests.harness.leaks import assert_settled, baseline, completed, rss_kib

M = "llama3.2:3b"
GEN = {"model": M, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
TOTAL = 20_000
WARMUP = 2_000
CONCURRENCY = 32


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_soak_with_random_faults(
    rig_factory: RigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = await rig_factory(
        nodes(*[(n, [M], [M]) for n in "abcd"], num_parallel=8),
        time_scale=0.0005,
        default_slots=8,
        first_byte_timeout=2.0,
        penalty_seconds=0.2,
    )
    base = baseline()
    # One info line per request would pile up in pytest's capture buffer and read as a leak.
    configure_logging("json", "warning")
    rng = random.Random(7)
    statuses: Counter[int] = Counter()
    faults: Counter[str] = Counter()
    issued = 0
    rss_warm = 0
    done_before = completed(rig)

    async def worker() -> None:
        nonlocal issued
        while issued < TOTAL:
            issued += 1
            async with rig.session.post(rig.url + "/api/generate", json=GEN) as resp:
                await resp.read()
                statuses[resp.status] += 1

    async def chaos() -> None:
        while issued < TOTAL:
            await asyncio.sleep(0.05)
            node = rng.choice(rig.fleet.nodes)
            kind = rng.choice(["503-storm", "500", "flap", "slow", "poll-fail", "nothing"])
            faults[kind] += 1
            if kind == "503-storm":
                node.faults.fail_next(rng.randint(5, 50), status=503, paths=["/api/generate"])
            elif kind == "500":
                node.faults.fail_next(rng.randint(1, 5), status=500, paths=["/api/generate"])
            elif kind == "flap":
                await node.stop_listening()
                await asyncio.sleep(0.02)
                await node.start_listening()
            elif kind == "slow":
                node.faults.slow(rng.uniform(1, 5))
            elif kind == "poll-fail":
                node.faults.fail_next(rng.randint(1, 4), status=500, paths=["/api/ps"])
            else:
                node.faults.clear()

    t0 = time.monotonic()
    workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
    while issued < WARMUP:
        await asyncio.sleep(0.05)
    rss_warm = rss_kib()
    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*workers)
    await chaos_task
    elapsed = time.monotonic() - t0
    for n in rig.fleet.nodes:
        n.faults.clear()
    rss_end = rss_kib()
    configure_logging("auto", "info")

    total = sum(statuses.values())
    ok = statuses[200]
    ran = completed(rig) - done_before
    injected = sum(n.stats.faults_injected for n in rig.fleet.nodes)
    duplicates = ran - ok
    line = (
        f"soak: {total} requests in {elapsed:.1f}s, statuses {dict(statuses)}, "
        f"chaos actions {dict(faults)}, faults injected by nodes {injected}, "
        f"failures seen {total - ok}, duplicates {duplicates}, "
        f"rss {rss_warm} KiB after warm-up -> {rss_end} KiB at end"
    )
    print(line)
    with capsys.disabled():
        print("\n" + line)

    assert total >= TOTAL
    assert set(statuses) <= {200, 500, 503, 504}, statuses
    assert ok >= 0.95 * total
    assert injected > 100
    # No request ran twice: every generation that completed was seen by a client as a 200
    # (a flap can cut a generation, which is then cancelled, not completed, and retried).
    assert duplicates == 0
    # ~10 MiB of allocator growth is seen; a 1 KiB/request leak would add ~18 MiB.
    assert rss_end - rss_warm < 16 * 1024, (rss_warm, rss_end)
    await assert_settled(rig, base)
