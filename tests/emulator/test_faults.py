"""Fault knobs, from Python and from the control endpoint, and the counters tests rely on."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from ollama_emulator import EmulatedNode
from tests.harness.emulator import MakeNode
from tests.harness.eventually import eventually


async def test_fail_next_counts_down_and_takes_the_path_shape(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    node.faults.fail_next(2, status=503, message="boom")
    async with http.get(node.url + "/api/tags") as r:
        assert (r.status, await r.json()) == (503, {"error": "boom"})
    async with http.get(node.url + "/v1/models") as r:
        assert r.status == 503
        assert (await r.json())["error"]["type"] == "api_error"
    async with http.get(node.url + "/api/tags") as r:
        assert r.status == 200
    assert node.stats.faults_injected == 2


async def test_fail_next_with_raw_body_and_path_filter(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    node.faults.fail_next(status=502, body="bad gateway", paths=["/api/chat"])
    async with http.get(node.url + "/api/tags") as r:
        assert r.status == 200
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(node.url + "/api/chat", json=body) as r:
        assert (r.status, await r.text()) == (502, "bad gateway")


async def test_hang_until_the_client_gives_up(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    node.faults.hang(times=1)
    with pytest.raises(TimeoutError):
        await http.get(node.url + "/api/ps", timeout=aiohttp.ClientTimeout(total=0.05))
    async with http.get(node.url + "/api/ps") as r:
        assert r.status == 200


async def test_drop_after_chunks_cuts_the_stream_and_frees_the_slot(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"])
    node.faults.drop_after(chunks=2, times=1)
    lines = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            node.url + "/api/generate", json={"model": "slow:1b", "prompt": "x"}
        ) as r:
            async for line in r.content:
                lines.append(json.loads(line))
    assert len(lines) == 2 and not lines[-1]["done"]
    await eventually(lambda: node.stats.generations_cancelled == 1)
    runner = node.scheduler.runner_for(node.catalogue["slow:1b"])
    assert runner is not None and runner.refcount == 0


async def test_drop_without_streaming_is_a_disconnect(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    node.faults.drop_after(0, times=1)
    # POST: aiohttp silently retries an idempotent GET once after a disconnect.
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await http.post(node.url + "/api/show", json={"model": "llama3.2"})
    async with http.post(node.url + "/api/show", json={"model": "llama3.2"}) as r:
        assert r.status == 200


async def test_slow_scales_the_token_rate(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": False}
    async with http.post(node.url + "/api/generate", json=body) as r:
        fast = (await r.json())["eval_duration"]
    node.faults.slow(4.0)
    async with http.post(node.url + "/api/generate", json=body) as r:
        slow = (await r.json())["eval_duration"]
    assert slow == pytest.approx(4 * fast, rel=0.01)


async def test_go_away_and_come_back(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    url = node.url
    await node.stop_listening()
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(url + "/")
    await node.start_listening()
    assert node.url == url
    async with http.get(url + "/api/ps") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]


async def test_go_away_cuts_in_flight_streams(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(loaded=["slow:1b"])
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            node.url + "/api/generate", json={"model": "slow:1b", "prompt": "x"}
        ) as r:
            await r.content.readline()
            await node.stop_listening()
            await r.read()
    runner = node.scheduler.runner_for(node.catalogue["slow:1b"])
    assert runner is not None and runner.refcount == 0


async def test_control_endpoint(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    control = node.url + "/-/emulator/faults"
    async with http.post(control, json={"fail_next": {"count": 1, "status": 500}}) as r:
        assert (await r.json())["fail_next"][0]["remaining"] == 1
    async with http.get(node.url + "/api/version") as r:
        assert (r.status, await r.json()) == (500, {"error": "emulated failure"})
    async with http.post(control, json={"slow": {"factor": 3}}) as r:
        assert node.faults.token_rate_factor == 3
    async with http.delete(control) as r:
        assert (await r.json())["slow"] == {"factor": 1.0, "latency": 0.0}
    async with http.post(control, json={"explode": {}}) as r:
        assert r.status == 400
    async with http.get(node.url + "/-/emulator/state") as r:
        state = await r.json()
    assert state["stats"]["requests"] == {"/api/version": 1}  # control paths are not counted
    assert (
        state["runners"][0]["name"] == "llama3.2:latest"
        and state["runners"][0]["keep_alive"] is None
    )
    assert state["pending"] == 0 and state["loading"] is None


async def test_control_go_away_for_a_while(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    async with http.post(node.url + "/-/emulator/faults", json={"go_away": {"seconds": 20}}) as r:
        assert r.status == 200
    await eventually(lambda: not node.listening)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(node.url + "/")
    await eventually(lambda: node.listening, timeout=2)
    async with http.get(node.url + "/") as r:
        assert r.status == 200


async def test_counters(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": False}
    await asyncio.gather(*(http.post(node.url + "/api/generate", json=body) for _ in range(3)))
    async with http.get(node.url + "/api/ps"):
        pass
    assert node.stats.requests == {"/api/generate": 3, "/api/ps": 1}
    assert (node.stats.generations_started, node.stats.generations_completed) == (3, 3)
