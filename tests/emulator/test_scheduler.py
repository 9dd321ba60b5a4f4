"""Scheduler behaviour (ollama.md §4–§6): slots, serial loads, queue, eviction, keep_alive, cancels.

Models ``tiny``, ``small``, ``other`` and ``slow`` are 4 GiB each with a 10 s
load (0.1 s real at the 0.01 time scale of these tests).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiohttp
import pytest

from ollama_emulator import (
    EmulatedNode,
    NodeConfig,
    ScaledClock,
    Scheduler,
    ServerBusy,
    Stats,
)
from ollama_wire.errors import MSG_SERVER_BUSY
from tests.harness.emulator import CATALOGUE, GIB, MakeNode
from tests.harness.eventually import eventually

LOAD_NS = 10 * 10**9


async def post(http: aiohttp.ClientSession, node: EmulatedNode, path: str, body: Any) -> Any:
    async with http.post(node.url + path, json=body) as r:
        text = await r.text()
        assert r.status == 200, text
        return json.loads(text.splitlines()[-1])


def gen(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "hello", "stream": False, **extra}


def runner(node: EmulatedNode, model: str) -> Any:
    return node.scheduler.runner_for(node.catalogue[model])


async def test_one_slot_makes_the_second_request_wait(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"], num_parallel=1)
    first = asyncio.create_task(
        post(http, node, "/api/generate", gen("slow:1b", options={"num_predict": 30}))
    )
    await eventually(lambda: runner(node, "slow:1b").in_flight == 1)
    second = asyncio.create_task(
        post(http, node, "/api/generate", gen("slow:1b", options={"num_predict": 30}))
    )
    await eventually(lambda: runner(node, "slow:1b").waiting == 1)
    assert runner(node, "slow:1b").in_flight == 1
    a, b = await asyncio.gather(first, second)
    # The second one's service time includes the wait for the slot.
    assert b["total_duration"] > a["eval_duration"] + b["eval_duration"] * 0.9
    assert node.stats.rejected_busy == 0


async def test_parallel_slots_run_together(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"], num_parallel=2)
    body = gen("slow:1b", options={"num_predict": 30})
    tasks = [asyncio.create_task(post(http, node, "/api/generate", body)) for _ in range(2)]
    await eventually(lambda: runner(node, "slow:1b").in_flight == 2)
    await asyncio.gather(*tasks)


async def test_loads_are_serial_and_load_duration_includes_queueing(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node()
    a = asyncio.create_task(post(http, node, "/api/generate", gen("tiny:1b")))
    await eventually(lambda: node.scheduler.loading is not None)
    b = asyncio.create_task(post(http, node, "/api/generate", gen("small:1b")))
    await eventually(lambda: node.scheduler.pending == 1)
    assert runner(node, "tiny:1b") is None  # loading models are invisible
    first, second = await asyncio.gather(a, b)
    assert LOAD_NS <= first["load_duration"] < 2 * LOAD_NS
    assert second["load_duration"] >= 1.8 * LOAD_NS  # it arrived a moment after the first
    assert node.stats.loads_completed == 2


async def test_concurrent_requests_for_one_model_share_one_load(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(num_parallel=4)
    replies = await asyncio.gather(
        *(post(http, node, "/api/generate", gen("tiny:1b")) for _ in range(4))
    )
    assert node.stats.loads_started == 1 and len(replies) == 4


async def test_queue_full_is_503_with_ollamas_message(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(max_queue=1, loaded=["slow:1b"])
    loading = asyncio.create_task(post(http, node, "/api/generate", gen("tiny:1b")))
    await eventually(lambda: node.scheduler.loading is not None)
    queued = asyncio.create_task(post(http, node, "/api/generate", gen("small:1b")))
    await eventually(lambda: node.scheduler.pending == 1)
    async with http.post(node.url + "/api/generate", json=gen("other:1b")) as r:
        assert (r.status, await r.json()) == (503, {"error": MSG_SERVER_BUSY})
    body = {"model": "other:1b", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(node.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 503
        assert (await r.json())["error"] == {
            "message": MSG_SERVER_BUSY, "type": "api_error", "param": None, "code": None,
        }  # fmt: skip
    # Waiting for a slot of a loaded model never counts against the queue.
    slots = [
        asyncio.create_task(
            post(http, node, "/api/generate", gen("slow:1b", options={"num_predict": 2}))
        )
        for _ in range(3)
    ]
    await asyncio.gather(loading, queued, *slots)
    assert node.stats.rejected_busy == 2


async def test_eviction_picks_the_idle_shortest_keep_alive(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(vram_bytes=10 * GIB, installed=["tiny:1b", "small:1b", "other:1b"])
    await post(http, node, "/api/generate", {"model": "tiny:1b", "keep_alive": "10m"})
    await post(http, node, "/api/generate", {"model": "small:1b", "keep_alive": "5m"})
    await post(http, node, "/api/generate", {"model": "other:1b"})
    assert {r.name for r in node.scheduler.runners.values()} == {"tiny:1b", "other:1b"}
    assert node.stats.evictions == 1


async def test_busy_victim_is_waited_for(make_node: MakeNode, http: aiohttp.ClientSession) -> None:
    node = await make_node(vram_bytes=10 * GIB, installed=["slow:1b", "small:1b", "other:1b"])
    await post(http, node, "/api/generate", {"model": "slow:1b", "keep_alive": "10m"})
    await post(http, node, "/api/generate", {"model": "small:1b", "keep_alive": "5m"})
    node.faults.slow(100)  # small: 8 tokens in 4 emulated s; slow: 3 tokens in 30 s
    long = asyncio.create_task(
        post(http, node, "/api/generate", gen("slow:1b", options={"num_predict": 3}))
    )
    short = asyncio.create_task(post(http, node, "/api/generate", gen("small:1b")))
    await eventually(
        lambda: runner(node, "small:1b").in_flight == 1 and runner(node, "slow:1b").in_flight == 1
    )
    incoming = asyncio.create_task(post(http, node, "/api/generate", {"model": "other:1b"}))
    await eventually(lambda: runner(node, "small:1b").draining)
    assert node.stats.loads_started == 2  # not loading yet: waiting for small to finish
    assert (await short)["done_reason"] == "stop"
    await incoming
    assert not long.done()  # the longer keep_alive kept generating
    await long
    assert {r.name for r in node.scheduler.runners.values()} == {"slow:1b", "other:1b"}
    assert node.stats.generations_cancelled == 0 and node.stats.evictions == 1


async def test_max_loaded_models(make_node: MakeNode, http: aiohttp.ClientSession) -> None:
    node = await make_node(max_loaded_models=1)
    await post(http, node, "/api/generate", {"model": "tiny:1b"})
    await post(http, node, "/api/generate", {"model": "small:1b"})
    assert [r.name for r in node.scheduler.runners.values()] == ["small:1b"]


async def test_first_model_always_loads_partially_offloaded(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(vram_bytes=3 * GIB)
    await post(http, node, "/api/generate", {"model": "tiny:1b"})
    async with http.get(node.url + "/api/ps") as r:
        (entry,) = (await r.json())["models"]
    assert entry["size"] == 4 * GIB and entry["size_vram"] == 3 * GIB


@pytest.mark.parametrize(
    ("keep_alive", "low", "high"),
    [
        pytest.param("10m", 5.5, 6.5, id="10m is 6 s real at 0.01"),
        pytest.param(3600, 35, 37, id="number of seconds"),
        pytest.param(None, 2.5, 3.5, id="absent gives the node default (5m)"),
    ],
)
async def test_expires_at_follows_keep_alive(
    make_node: MakeNode, http: aiohttp.ClientSession, keep_alive: Any, low: float, high: float
) -> None:
    node = await make_node()
    body = {"model": "tiny:1b"} | ({"keep_alive": keep_alive} if keep_alive is not None else {})
    await post(http, node, "/api/generate", body)
    async with http.get(node.url + "/api/ps") as r:
        (entry,) = (await r.json())["models"]
    from datetime import datetime

    left = datetime.fromisoformat(entry["expires_at"]).timestamp() - time.time()
    assert low < left < high


async def test_keep_alive_expiry_and_last_writer_wins(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(keep_alive=3.0)
    await post(http, node, "/api/generate", gen("tiny:1b", keep_alive="1h"))
    await post(http, node, "/api/generate", gen("tiny:1b"))  # inherits 1h
    assert runner(node, "tiny:1b").keep_alive == 3600
    await post(http, node, "/api/generate", gen("tiny:1b", keep_alive="2s"))  # last writer
    assert runner(node, "tiny:1b") is not None
    await eventually(lambda: runner(node, "tiny:1b") is None, timeout=2)
    await post(http, node, "/api/generate", gen("tiny:1b"))  # fresh load: node default 3 s
    assert runner(node, "tiny:1b").keep_alive == 3.0
    await post(http, node, "/api/generate", gen("tiny:1b", keep_alive=0))
    assert runner(node, "tiny:1b") is None  # keep_alive 0 unloads right after the request


async def test_num_ctx_change_reloads_after_in_flight_drain(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node()
    await post(http, node, "/api/generate", {"model": "slow:1b", "options": {"num_ctx": 2048}})
    assert runner(node, "slow:1b").num_ctx == 2048
    busy = asyncio.create_task(
        post(
            http,
            node,
            "/api/generate",
            gen("slow:1b", options={"num_ctx": 2048, "num_predict": 20}),
        )
    )
    await eventually(lambda: runner(node, "slow:1b").in_flight == 1)
    reload = asyncio.create_task(
        post(
            http, node, "/api/generate", gen("slow:1b", options={"num_ctx": 4096, "num_predict": 1})
        )
    )
    await eventually(lambda: runner(node, "slow:1b").draining)
    old = await busy
    assert old["done_reason"] == "length" and not reload.done()
    await reload
    assert runner(node, "slow:1b").num_ctx == 4096
    assert node.stats.loads_completed == 2 and node.stats.unloads == 1


async def test_disconnect_cancels_generation_and_frees_the_slot(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"])
    async with http.post(node.url + "/api/generate", json={"model": "slow:1b", "prompt": "x"}) as r:
        await r.content.readline()
        await r.content.readline()
        r.close()
    await eventually(lambda: node.stats.generations_cancelled == 1)
    slow = runner(node, "slow:1b")
    assert (slow.refcount, slow.in_flight) == (0, 0)
    reply = await post(http, node, "/api/generate", gen("slow:1b", options={"num_predict": 1}))
    assert reply["load_duration"] < LOAD_NS / 10  # warm, slot free


async def test_disconnect_while_waiting_for_a_slot(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"])
    body = gen("slow:1b", options={"num_predict": 100})  # 10 emulated s: 0.1 s real
    busy = asyncio.create_task(post(http, node, "/api/generate", body))
    await eventually(lambda: runner(node, "slow:1b").in_flight == 1)
    with pytest.raises(TimeoutError):
        timeout = aiohttp.ClientTimeout(total=0.02)
        await http.post(node.url + "/api/generate", json=gen("slow:1b"), timeout=timeout)
    await eventually(lambda: runner(node, "slow:1b").refcount == 1)
    assert not busy.done() and node.stats.generations_cancelled == 1
    await busy
    assert node.stats.generations_completed == 1


async def test_disconnect_of_load_trigger_aborts_and_next_restarts(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node()
    trigger = asyncio.create_task(post(http, node, "/api/generate", gen("tiny:1b")))
    await eventually(lambda: node.scheduler.loading is not None)
    follower = asyncio.create_task(post(http, node, "/api/generate", gen("tiny:1b")))
    await eventually(lambda: node.scheduler.pending == 1)
    await asyncio.sleep(0.05)  # half of the 0.1 s load
    trigger.cancel()
    await eventually(lambda: node.stats.loads_aborted == 1)
    reply = await follower
    assert node.stats.loads_started == 2 and node.stats.loads_completed == 1
    assert reply["load_duration"] >= 1.4 * LOAD_NS  # waited, then a full load from scratch


async def test_restart_forgets_loaded_models(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    await post(http, node, "/api/generate", {"model": "tiny:1b"})
    await node.restart()
    assert [r.name for r in node.scheduler.runners.values()] == ["llama3.2:latest"]


# -- the scheduler without HTTP -------------------------------------------------------------


@pytest.fixture
async def sched() -> Any:
    config = NodeConfig(name="n", vram_bytes=10 * GIB, max_queue=1)
    scheduler = Scheduler(config, ScaledClock(0.001), Stats())
    scheduler.start()
    yield scheduler
    await scheduler.close()


async def test_direct_acquire_release_and_expire(sched: Scheduler) -> None:
    tiny = CATALOGUE["tiny:1b"]
    runner = await sched.acquire(tiny, "tiny:1b", keep_alive=60)
    assert runner.refcount == 1 and sched.runner_for(tiny) is runner
    sched.expire(tiny)  # busy: unloads once released
    assert sched.runner_for(tiny) is runner
    sched.release(runner)
    assert sched.runner_for(tiny) is None and sched.stats.unloads == 1


async def test_direct_queue_bound(sched: Scheduler) -> None:
    first = asyncio.create_task(sched.acquire(CATALOGUE["tiny:1b"], "tiny:1b"))
    await eventually(lambda: sched.loading is not None)
    second = asyncio.create_task(sched.acquire(CATALOGUE["small:1b"], "small:1b"))
    await eventually(lambda: sched.pending == 1)
    with pytest.raises(ServerBusy):
        await sched.acquire(CATALOGUE["other:1b"], "other:1b")
    for runner in await asyncio.gather(first, second):
        sched.release(runner)


TWO = {"tiny:1b": 600.0, "small:1b": 300.0}


@pytest.mark.parametrize(
    ("keep_alives", "busy", "victim"),
    [
        pytest.param(TWO, set(), "small:1b", id="shortest keep_alive"),
        pytest.param(TWO, {"small:1b"}, "tiny:1b", id="first idle one"),
        pytest.param(TWO, {"tiny:1b", "small:1b"}, "small:1b", id="all busy: shortest"),
        pytest.param({"tiny:1b": math.inf, "small:1b": 0.5}, set(), "small:1b", id="forever last"),
    ],
)  # fmt: skip
async def test_victim_choice(
    sched: Scheduler, keep_alives: dict[str, float], busy: set[str], victim: str
) -> None:
    for name, keep_alive in keep_alives.items():
        runner = sched.preload(CATALOGUE[name], name, keep_alive)
        runner.refcount = 1 if name in busy else 0
    assert sched._victim().name == victim
    for runner in sched.runners.values():
        runner.refcount = 0
