"""Backends that die, hang, crawl, storm 503s or flap; clients that leave; pollers that fail.

Every request that had not started streaming must succeed elsewhere or get a
clear error; none may run twice; in-flight counters return to zero; no task
or connection is leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from tests.harness.cut import read_cut_lines
from tests.harness.fleet import Rig, RigFactory, nodes
from tests.harness.leaks import assert_settled, baseline, completed, path_count, started

M = "llama3.2:3b"
GEN = {"model": M, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
STREAM = {"model": M, "prompt": "hi", "stream": True, "options": {"num_predict": 2000}}


async def two(rig_factory: RigFactory, **kw: Any) -> Rig:
    kw.setdefault("time_scale", 0.01)
    rig = await rig_factory(
        nodes(("a", [M], [M]), ("b", [M], [M]), num_parallel=4), default_slots=4, **kw
    )
    for _ in range(4):  # warm the connection pools
        assert (await rig.post("/api/generate", GEN)).status == 200
    return rig


async def outcome(rig: Rig, body: dict[str, Any], path: str = "/api/generate") -> tuple[int, Any]:
    resp = await rig.post(path, body)
    text = await resp.text()
    return resp.status, json.loads(text)


async def test_backend_killed_before_the_request(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory)
    base = baseline()
    before = completed(rig)
    await rig.node("a").stop_listening()
    results = [await outcome(rig, GEN) for _ in range(20)]
    assert all(s == 200 for s, _ in results), results
    assert completed(rig) - before == 20  # each ran exactly once
    await rig.node("a").start_listening()
    await assert_settled(rig, base)


async def test_backend_killed_during_a_stream(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory, time_scale=0.05)
    base = baseline()
    before = path_count(rig, "/api/generate")
    for n in rig.fleet.nodes:
        n.faults.slow(200.0)  # a natural answer is ~25 tokens: make it last seconds
    resp = await rig.post("/api/generate", STREAM)
    assert resp.status == 200
    victim = rig.node(resp.headers["X-Ollama-Backend"])
    first = await resp.content.readline()
    assert json.loads(first)["done"] is False
    await victim.stop_listening()
    lines = await read_cut_lines(resp)
    assert "error" in lines[-1] and "stream broken" in lines[-1]["error"], (len(lines), lines[-1])
    assert path_count(rig, "/api/generate") - before == 1  # never retried after the first byte
    await victim.start_listening()
    await assert_settled(rig, base)


async def test_hanging_backend_gives_a_clear_504(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory, first_byte_timeout=0.5)
    base = baseline()
    for n in rig.fleet.nodes:
        n.faults.hang(times=1, paths=["/api/generate"])
    t0 = time.monotonic()
    status, doc = await outcome(rig, GEN)
    assert status == 504 and "sent nothing for 0.5s" in doc["error"]
    assert time.monotonic() - t0 < 3
    # a hang is not retried: the request may be running there (no double execution)
    assert sum(1 for n in rig.fleet.nodes if n.faults.describe()["hang"]["remaining"] == 0) == 1
    for n in rig.fleet.nodes:
        n.faults.clear()
    await assert_settled(rig, base)


async def test_slow_backend_still_answers(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory)
    for n in rig.fleet.nodes:
        n.faults.slow(20.0, latency=0.5)
    results = await asyncio.gather(*(outcome(rig, GEN) for _ in range(8)))
    assert all(s == 200 and d["done"] for s, d in results)


async def test_503_storm_fails_over_and_nothing_runs_twice(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory)
    base = baseline()
    before = completed(rig)
    rig.node("a").faults.fail_next(1000, status=503, message="server busy", paths=["/api/generate"])
    results = await asyncio.gather(*(outcome(rig, GEN) for _ in range(40)))
    assert all(s == 200 for s, _ in results), results
    assert completed(rig) - before == 40
    assert rig.node("a").stats.faults_injected > 0
    rig.node("a").faults.clear()
    await assert_settled(rig, base)


async def test_flapping_backend(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory)
    base = baseline()
    before = completed(rig)
    flapper = rig.node("a")
    stop = asyncio.Event()

    async def flap() -> int:
        flaps = 0
        while not stop.is_set():
            await flapper.stop_listening()
            await asyncio.sleep(0.03)
            await flapper.start_listening()
            await asyncio.sleep(0.03)
            flaps += 1
        return flaps

    task = asyncio.create_task(flap())
    sem = asyncio.Semaphore(8)

    async def one() -> tuple[int, Any]:
        async with sem:
            return await outcome(rig, GEN)

    results = await asyncio.gather(*(one() for _ in range(200)))
    stop.set()
    flaps = await task
    ok = sum(1 for s, _ in results if s == 200)
    errors = [(s, d) for s, d in results if s != 200]
    assert all(s in (502, 503, 504) and isinstance(d["error"], str) for s, d in errors), errors
    assert ok >= 190, (ok, errors[:3])
    assert completed(rig) - before == ok  # no success was executed twice
    print(f"\nflapping: {flaps} flaps, {ok} ok, {len(errors)} clear errors")
    await assert_settled(rig, base)


async def test_all_backends_down_and_back(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory)
    base = baseline()
    for n in rig.fleet.nodes:
        await n.stop_listening()
    t0 = time.monotonic()
    for path in ("/api/generate", "/v1/completions"):
        resp = await rig.post(path, {**GEN, "prompt": "x"})
        assert resp.status == 503 and resp.headers["Retry-After"]
        doc = await resp.json()
        assert isinstance(doc["error"], str if path.startswith("/api") else dict)
    assert time.monotonic() - t0 < 3
    await rig.until(lambda: not rig.bal.routable(), timeout=10)
    resp = await rig.post("/api/generate", GEN)
    assert resp.status == 503
    for n in rig.fleet.nodes:
        await n.start_listening()
    await rig.until(lambda: len(rig.bal.routable()) == 2, timeout=10)
    status, _ = await outcome(rig, GEN)
    assert status == 200
    await assert_settled(rig, base)


async def _cancel_when(rig: Rig, body: dict[str, Any], cond: Any) -> None:
    task = asyncio.create_task(rig.post("/api/generate", body))
    await rig.until(cond)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_client_leaves_while_queued_behind_a_busy_slot(rig_factory: RigFactory) -> None:
    """Queued inside Ollama (early binding: late binding queues in the balancer, where a
    client that leaves never reaches a pod, tests/balancer/test_waitroom.py)."""
    rig = await rig_factory(nodes(("a", [M], [M]), num_parallel=1), time_scale=0.05, queue=False)
    base = baseline()
    node = rig.node("a")
    node.faults.slow(200.0)
    busy = await rig.post("/api/generate", STREAM)
    await rig.until(lambda: node.stats.generations_started == 1)
    await _cancel_when(rig, GEN, lambda: node.stats.requests["/api/generate"] == 2)
    await rig.until(lambda: node.stats.generations_cancelled == 1)  # left the queue
    assert node.stats.generations_started == 1  # the queued one never started
    busy.close()
    await rig.until(lambda: node.stats.generations_cancelled == 2)
    assert node.stats.generations_completed == 0
    await assert_settled(rig, base)


async def test_client_leaves_during_a_cold_load(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [])), time_scale=0.2)
    base = baseline()
    node = rig.node("a")
    await _cancel_when(rig, GEN, lambda: node.stats.loads_started == 1)
    await rig.until(lambda: node.stats.loads_aborted == 1)
    assert node.stats.generations_completed == 0
    await assert_settled(rig, base)


async def test_client_leaves_while_streaming(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=0.05)
    base = baseline()
    node = rig.node("a")
    resp = await rig.post("/api/generate", {**STREAM, "options": {"num_predict": 500}})
    await resp.content.readline()
    resp.close()
    await rig.until(lambda: node.stats.generations_cancelled == 1)
    assert node.stats.generations_completed == 0
    await assert_settled(rig, base)


async def test_poller_failing_takes_the_backend_out_and_back(rig_factory: RigFactory) -> None:
    rig = await two(rig_factory, fail_threshold=2)
    base = baseline()
    a = rig.node("a")
    a.faults.fail_next(10_000, status=500, paths=["/api/ps"])
    await rig.until(lambda: rig.bal.routable() == ["b"], timeout=10)
    before = rig.node("a").stats.requests["/api/generate"]
    results = await asyncio.gather(*(outcome(rig, GEN) for _ in range(10)))
    assert all(s == 200 for s, _ in results)
    assert a.stats.requests["/api/generate"] == before  # not routed while its poll fails
    a.faults.clear()
    await rig.until(lambda: sorted(rig.bal.routable()) == ["a", "b"], timeout=10)
    await assert_settled(rig, base)


async def test_sessions_and_connections_survive_many_faults(rig_factory: RigFactory) -> None:
    """A mixed burst with every knob armed at once still settles cleanly."""
    rig = await two(rig_factory, first_byte_timeout=1.0)
    base = baseline()
    a, b = rig.node("a"), rig.node("b")
    a.faults.fail_next(5, status=503)
    b.faults.fail_next(3, status=500, message="model runner crashed")
    a.faults.hang(times=2, paths=["/api/generate"])
    statuses = [s for s, _ in await asyncio.gather(*(outcome(rig, GEN) for _ in range(30)))]
    assert set(statuses) <= {200, 500, 503, 504}, statuses
    assert statuses.count(200) >= 20
    assert started(rig) >= statuses.count(200)
    await assert_settled(rig, base)


async def test_a_silent_stream_is_cut_after_idle_timeout(rig_factory: RigFactory) -> None:
    """The idle watchdog: a stream that goes quiet for idle_timeout ends like a broken one
    (Ollama's final error line, then the cut), never earlier than idle_timeout, and leaks
    nothing."""
    rig = await two(rig_factory, time_scale=0.05, idle_timeout=0.4)
    base = baseline()
    for n in rig.fleet.nodes:
        n.faults.slow(5000.0)  # seconds between tokens: far longer than idle_timeout
    t0 = time.monotonic()
    resp = await rig.post("/api/generate", STREAM)
    assert resp.status == 200
    lines = await read_cut_lines(resp)
    elapsed = time.monotonic() - t0
    last = lines[-1]
    assert list(last) == ["error"], last
    assert "stream broken: TimeoutError" in last["error"], last
    assert 0.4 <= elapsed < 10, elapsed
    for n in rig.fleet.nodes:
        n.faults.slow(1.0)
    await assert_settled(rig, base)
