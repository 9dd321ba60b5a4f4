"""``hide_pod_names``: pod names stay off every answer to clients — headers and error texts —
and stay in the log line and the metrics (docs/security.md "Pod names").

Front ends such as Open WebUI pass the balancer's headers on to the browser, so with the
setting on no answer says ``gpu-a`` or ``gpu-b``: the headers that name a pod or the route
are left out, and the balancer's own error texts say "a pod".
"""

from __future__ import annotations

from typing import Any

import aiohttp
import ollama
import pytest

from ollama_balancer.core.record import RequestRecord
from tests.harness.cut import read_cut
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}
PODS = ("gpu-a", "gpu-b")
#: The headers that carry pod names or routing to clients when the setting is off.
NAMING = ("X-Ollama-Backend", "X-Route-Reason", "X-Ollama-Kept")


async def hidden(rig_factory: RigFactory, **kw: Any) -> Rig:
    specs = [(name, [M], [M]) for name in PODS]
    return await rig_factory(
        nodes(*specs, preload_keep_alive=300.0), hide_pod_names=True, affinity=False, **kw
    )


def records(rig: Rig) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    rig.bal.records.append(seen.append)
    return seen


def assert_unnamed(resp: aiohttp.ClientResponse, body: bytes) -> None:
    assert not [h for h in NAMING if h in resp.headers], dict(resp.headers)
    for pod in PODS:
        assert pod.encode() not in body, body


async def test_an_answer_names_no_pod_but_the_log_and_metrics_do(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory)
    log = records(rig)
    async with rig.session.post(rig.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 200
        assert_unnamed(resp, await resp.read())
        assert resp.headers["X-Request-ID"]
    await rig.until(lambda: bool(log))
    assert log[0].backend in PODS and log[0].reason  # kept where operators look
    scrape = await rig.scrape()
    series = scrape.series("ollama_fleet_requests_total")
    assert [dict(labels)["backend"] for labels in series] == [log[0].backend]


async def test_a_broken_stream_says_a_pod_broke(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory)
    for pod in PODS:
        rig.node(pod).faults.drop_after(2, paths=["/api/chat"])
    async with rig.session.post(rig.url + "/api/chat", json={**CHAT, "stream": True}) as resp:
        body = await read_cut(resp)
        assert_unnamed(resp, body)
    assert body.splitlines()[-1].startswith(b'{"error":"a pod: stream broken')


async def test_an_unload_names_no_pod(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory)
    await rig.session.post(
        rig.node("gpu-a").url + "/api/generate", json={"model": M, "keep_alive": -1}
    )
    await rig.poll()
    unload = {"model": M, "keep_alive": 0}
    async with rig.session.post(rig.url + "/api/generate", json=unload) as resp:
        assert resp.status == 200  # gpu-b's copy went, gpu-a's pinned one stayed
        assert_unnamed(resp, await resp.read())
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(model=M, keep_alive=0)
    assert err.value.status_code == 403
    assert "it is pinned on 1 pod" in err.value.error
    assert not any(pod in err.value.error for pod in PODS)


async def test_every_attempt_failing_names_no_pod(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory, max_attempts=2)
    for pod in PODS:
        await rig.node(pod).stop_listening()
    async with rig.session.post(rig.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 503
        body = await resp.read()
        assert_unnamed(resp, body)
    assert b"a pod: unreachable" in body
    for pod in PODS:
        await rig.node(pod).start_listening()


async def test_an_unknown_pod_lists_no_pods(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory)
    async with rig.session.post(rig.url + "/api/chat", json={**CHAT, "model": f"{M}@x"}) as resp:
        assert resp.status == 404
        assert_unnamed(resp, await resp.read())


async def test_an_admin_fan_out_names_no_pod(rig_factory: RigFactory) -> None:
    rig = await hidden(rig_factory, admin="fanout")
    log = records(rig)
    await rig.node("gpu-b").stop_listening()
    copy = {"source": M, "destination": "helper"}
    async with rig.session.post(rig.url + "/api/copy", json=copy) as resp:
        assert resp.status == 500
        body = await resp.read()
        assert_unnamed(resp, body)
    assert b"a pod: " in body
    await rig.until(lambda: bool(log))
    assert log[0].backend == "gpu-a,gpu-b" and set(log[0].outcomes) == set(PODS)
    await rig.node("gpu-b").start_listening()
