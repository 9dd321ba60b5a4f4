"""The balancer as a client sees it: real emulated Ollama nodes behind it, on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.harness.cut import read_cut, read_cut_lines
from tests.harness.fleet import RigFactory, nodes

M = "llama3.2:3b"
M2 = "qwen2.5:7b"
EMB = "nomic-embed-text"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_routes_to_the_pod_where_the_model_is_resident(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M, M2], [M2]), ("b", [M, M2], [M])))
    for _ in range(3):
        resp = await rig.post("/api/chat", CHAT)
        assert resp.status == 200
        assert resp.headers["X-Ollama-Backend"] == "b"
        assert resp.headers["X-Route-Reason"] in ("resident", "affinity")
        doc = await resp.json()
        assert doc["done"] is True and doc["model"] == M
    assert rig.node("a").stats.loads_started == 0


async def test_request_id_is_kept_or_made(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.post("/api/chat", CHAT, headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await rig.post("/api/chat", {"model": "nope"})
    assert len(resp.headers["X-Request-ID"]) == 32


async def test_followers_of_a_cold_load_join_it(rig_factory: RigFactory) -> None:
    # 4 parallel slots per pod: the three followers fit in the loading pod's slots,
    # so waiting for its load is never worse than starting a second one.
    rig = await rig_factory(
        nodes(("a", [M], []), ("b", [M], []), num_parallel=4), time_scale=0.05, default_slots=4
    )
    results = await asyncio.gather(*(rig.post("/api/chat", CHAT) for _ in range(4)))
    assert all(r.status == 200 for r in results)
    served = {r.headers["X-Ollama-Backend"] for r in results}
    reasons = sorted(r.headers["X-Route-Reason"] for r in results)
    assert len(served) == 1, served
    assert reasons.count("cold-load") == 1 and reasons.count("loading") == 3
    assert sum(n.stats.loads_started for n in rig.fleet.nodes) == 1
    # learned from Ollama's load_duration in the final chunk
    assert (
        rig.bal.ledger.occupancy().load_seconds(_key(M))
        < rig.bal.settings.routing.default_load_seconds
    )


def _key(name: str) -> str:
    from ollama_wire.names import canonical

    return canonical(name)


# ---------------------------------------------------------------- streaming
async def test_ndjson_stream_is_passed_through_unchanged(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    body = {"model": M, "prompt": "why is the sky blue", "options": {"seed": 7}}
    resp = await rig.post("/api/generate", body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    raw = await resp.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b""  # every object ends in \n, no blank lines
    docs = [json.loads(line) for line in lines[:-1]]
    assert all(not d["done"] for d in docs[:-1]) and docs[-1]["done"] is True
    assert docs[-1]["eval_count"] == len(docs) - 1
    # Same seed straight to the node gives the same text.
    direct = await rig.session.post(rig.node("a").url + "/api/generate", json=body)
    direct_docs = [json.loads(x) for x in (await direct.read()).splitlines()]
    assert [d["response"] for d in direct_docs] == [d["response"] for d in docs]


async def test_sse_stream_ends_with_done(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await rig.post("/v1/chat/completions", body)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = (await resp.read()).decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    first = json.loads(frames[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"


async def test_client_disconnect_cancels_generation_upstream(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=1.0)
    node = rig.node("a")
    body = {"model": M, "prompt": "long", "options": {"num_predict": 500}}
    async with aiohttp.ClientSession() as own:
        resp = await own.post(rig.url + "/api/generate", json=body)
        await resp.content.readline()
        await resp.content.readline()
        resp.close()  # the client goes away mid-stream
    await rig.until(lambda: node.stats.generations_cancelled == 1)
    await rig.until(lambda: rig.bal.ledger.total_inflight() == 0)
    assert node.stats.generations_completed == 0


async def test_client_disconnect_during_cold_load_aborts_it(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [])), time_scale=1.0)  # a 4 s load
    node = rig.node("a")
    async with aiohttp.ClientSession() as own:
        task = asyncio.ensure_future(own.post(rig.url + "/api/chat", json=CHAT))
        await rig.until(lambda: node.stats.loads_started == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await rig.until(lambda: node.stats.loads_aborted == 1)
    await rig.until(lambda: rig.bal.ledger.loading(node.name, _key(M)) is None)


# ----------------------------------------------------------------- failover
async def test_503_before_first_byte_fails_over(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [])))
    # a is ranked first (resident); it answers Ollama's queue-full 503 once.
    rig.node("a").faults.fail_next(1, status=503, message="server busy", paths=["/api/chat"])
    resp = await rig.post("/api/chat", CHAT)
    assert resp.status == 200
    assert resp.headers["X-Ollama-Backend"] == "b"
    assert resp.headers["X-Route-Reason"] == "cold-load"
    assert rig.node("a").stats.requests["/api/chat"] == 1  # was tried and failed
    assert rig.node("a").stats.generations_completed == 0
    assert rig.node("b").stats.generations_completed == 1


async def test_refused_connection_fails_over(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [M])))
    await rig.node("a").stop_listening()
    for _ in range(4):
        resp = await rig.post("/api/chat", CHAT)
        assert resp.status == 200
        assert resp.headers["X-Ollama-Backend"] == "b"


async def test_no_retry_after_the_first_byte(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [M])), time_scale=0.1)
    for n in rig.fleet.nodes:
        n.faults.drop_after(2, paths=["/api/generate"])
    resp = await rig.post("/api/generate", {"model": M, "prompt": "x"})
    assert resp.status == 200
    last = (await read_cut_lines(resp))[-1]
    assert "error" in last and resp.headers["X-Ollama-Backend"] in last["error"]
    total = sum(n.stats.requests["/api/generate"] for n in rig.fleet.nodes)
    assert total == 1  # never executed twice


async def test_no_done_on_broken_sse(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=0.1)
    rig.node("a").faults.drop_after(2, paths=["/v1/chat/completions"])
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await rig.post("/v1/chat/completions", body)
    raw = (await read_cut(resp)).decode()
    assert "[DONE]" not in raw


async def test_fast_failing_pod_is_avoided(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [M])), affinity=False)
    for n in rig.fleet.nodes:
        n.faults.fail_next(1000, status=500, message="boom", paths=["/api/generate"])
    rig.node("b").faults.clear()
    served = []
    for _ in range(10):
        resp = await rig.post("/api/generate", {"model": M, "prompt": "x", "stream": False})
        assert resp.status == 200
        served.append(resp.headers["X-Ollama-Backend"])
    assert served == ["b"] * 10
    assert rig.node("a").stats.requests["/api/generate"] <= 1


async def test_all_holders_down_is_503_with_retry_after(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M2], [M2])), fail_threshold=1)
    await rig.node("a").stop_listening()
    await rig.poll()
    resp = await rig.post("/api/chat", CHAT)
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert "a" in (await resp.json())["error"]
    resp = await rig.post("/v1/chat/completions", {**CHAT})
    assert resp.status == 503
    assert (await resp.json())["error"]["type"] == "api_error"


async def test_backend_5xx_on_every_pod_returns_its_error(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    rig.node("a").faults.fail_next(
        5, status=500, message="model runner stopped", paths=["/api/chat"]
    )
    resp = await rig.post("/api/chat", CHAT)
    assert resp.status == 500
    assert "model runner stopped" in (await resp.json())["error"]


# ----------------------------------------------------------------- listings
async def test_aggregated_listings(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M, EMB], [M]), ("b", [M, M2], [M2])))
    tags = await (await rig.session.get(rig.url + "/api/tags")).json()
    names = sorted(m["name"] for m in tags["models"])
    assert names == sorted({"llama3.2:3b", "nomic-embed-text:latest", "qwen2.5:7b"})
    ps = await (await rig.session.get(rig.url + "/api/ps")).json()
    assert sorted(m["name"] for m in ps["models"]) == ["llama3.2:3b", "qwen2.5:7b"]
    assert all("expires_at" in m and "size_vram" in m for m in ps["models"])
    models = await (await rig.session.get(rig.url + "/v1/models")).json()
    assert models["object"] == "list"
    assert sorted(m["id"] for m in models["data"]) == names
    one = await rig.session.get(rig.url + "/v1/models/llama3.2:3b")
    assert (await one.json())["id"] == "llama3.2:3b"
    missing = await rig.session.get(rig.url + "/v1/models/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["type"] == "not_found_error"
    version = await (await rig.session.get(rig.url + "/api/version")).json()
    assert version["version"]
    root = await rig.session.get(rig.url + "/")
    assert await root.text() == "Ollama is running"
    head = await rig.session.head(rig.url + "/")
    assert head.status == 200


async def test_empty_fleet_lists_are_empty_not_null(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], [])))
    models = await (await rig.session.get(rig.url + "/v1/models")).json()
    assert models["data"] == []
    tags = await (await rig.session.get(rig.url + "/api/tags")).json()
    assert tags == {"models": []}


# ------------------------------------------------------------------ pinning
@pytest.mark.parametrize("how", ["header", "suffix"])
async def test_pinning(rig_factory: RigFactory, how: str) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [])))
    body = dict(CHAT)
    headers = {}
    if how == "header":
        headers["X-Ollama-Backend"] = "b"
    else:
        body["model"] = M + "@b"
    resp = await rig.post("/api/chat", body, headers=headers)
    assert resp.status == 200
    assert resp.headers["X-Ollama-Backend"] == "b"
    assert resp.headers["X-Route-Reason"] == "named"
    assert (await resp.json())["model"] == M


@pytest.mark.parametrize(
    "name", ["ollama/llama3.2:3b", "ollama:llama3.2:3b", "LLAMA3.2:3B", "library/llama3.2:3b"]
)
async def test_gateway_prefixes_and_aliases(rig_factory: RigFactory, name: str) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.post("/api/chat", {**CHAT, "model": name})
    assert resp.status == 200, await resp.text()


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        pytest.param("/api/chat", b"{not json", 400, "invalid JSON", id="invalid json"),
        pytest.param("/api/chat", b"", 400, "missing request body", id="empty body"),
        pytest.param("/api/chat", b'{"messages": []}', 400, "model is required", id="no model"),
        pytest.param("/api/chat", b"[1, 2]", 400, "invalid JSON", id="not an object"),
        pytest.param(
            "/api/chat", b'{"model": "../../etc"}', 400, "invalid model name", id="path tricks"
        ),
        pytest.param(
            "/api/chat",
            b'{"model": "nope:1b"}',
            404,
            "model 'nope:1b' not found",
            id="unknown model",
        ),
        pytest.param(
            "/api/generate",
            b'{"model": "' + b"[" * 100 + b'"}',
            400,
            "invalid model name",
            id="junk model",
        ),
    ],
)
async def test_errors_in_ollama_shape(
    rig_factory: RigFactory, path: str, body: bytes, status: int, message: str
) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.session.post(rig.url + path, data=body)
    assert resp.status == status
    doc = await resp.json()
    assert set(doc) == {"error"} and message in doc["error"]


@pytest.mark.parametrize(
    ("body", "status", "etype"),
    [
        pytest.param(b"{", 400, "invalid_request_error", id="invalid json"),
        pytest.param(b'{"model": "nope"}', 404, "not_found_error", id="unknown model"),
    ],
)
async def test_errors_in_openai_shape(
    rig_factory: RigFactory, body: bytes, status: int, etype: str
) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.session.post(rig.url + "/v1/chat/completions", data=body)
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["type"] == etype and err["message"] and err["param"] is None


async def test_unknown_path_and_method_like_ollama(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.session.get(rig.url + "/api/nope")
    assert resp.status == 404 and await resp.text() == "404 page not found"
    resp = await rig.session.get(rig.url + "/api/chat")
    assert resp.status == 405 and await resp.text() == "405 method not allowed"


async def test_body_size_limit(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), max_body_bytes=1024)
    resp = await rig.session.post(rig.url + "/api/chat", data=b'{"model":"' + b"x" * 4096 + b'"}')
    assert resp.status == 413
    assert "limit is 1024" in (await resp.json())["error"]


# -------------------------------------------------------------------- admin
async def test_admin_endpoints_refused_by_default(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    for method, path in [
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("POST", "/api/push"),
        ("HEAD", "/api/blobs/sha256:00"),
    ]:
        resp = await rig.session.request(method, rig.url + path, json={"model": M})
        assert resp.status == 403, path
        if method != "HEAD":
            assert "ModelPool" in (await resp.json())["error"]
    assert rig.node("a").stats.pulls_started == 0


async def test_admin_fanout_pull_and_delete(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    resp = await rig.post("/api/pull", {"model": M2})
    assert resp.status == 200
    lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    size = max(x.get("total", 0) for x in lines)
    assert any(x.get("completed") == size for x in lines)  # merged: both pods' bytes
    await rig.poll()
    assert all(M2 in [m.name for m in s.installed.values()] for s in rig.bal.view.snapshot.backends)
    resp = await rig.session.delete(
        rig.url + "/api/delete", json={"model": M2}, headers={"X-Ollama-Backend": "a"}
    )
    assert resp.status == 200
    await rig.poll()
    a, b = rig.bal.view.snapshot.backends
    assert not a.installed and b.installed


# ------------------------------------------------------------------ affinity
async def test_conversation_affinity(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(*((n, [M], [M]) for n in "abcd")), seed=3)
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "topic 1"}]
    first = await rig.post("/api/chat", {"model": M, "messages": convo, "stream": False})
    pod = first.headers["X-Ollama-Backend"]
    for turn in range(4):
        convo = [
            *convo,
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"more {turn}"},
        ]
        resp = await rig.post("/api/chat", {"model": M, "messages": convo, "stream": False})
        assert resp.headers["X-Ollama-Backend"] == pod
        assert resp.headers["X-Route-Reason"] == "affinity"
    resp = await rig.post("/api/chat", CHAT, headers={"X-Session-ID": "s1"})
    pod2 = resp.headers["X-Ollama-Backend"]
    again = await rig.post(
        "/api/chat",
        {**CHAT, "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Session-ID": "s1"},
    )
    assert again.headers["X-Ollama-Backend"] == pod2


@pytest.mark.parametrize(
    ("headers", "extra"),
    [
        pytest.param({"X-Claude-Code-Session-Id": "cc-1"}, {}, id="Claude Code's header"),
        pytest.param({"session_id": "codex-1"}, {}, id="Codex CLI's header"),
        pytest.param({}, {"prompt_cache_key": "conv-7"}, id="OpenAI prompt_cache_key"),
        pytest.param({}, {"user": "alice"}, id="OpenAI user"),
    ],
)
async def test_agents_session_keys_pin_a_conversation(
    rig_factory: RigFactory, headers: dict[str, str], extra: dict[str, Any]
) -> None:
    """Turns whose openings differ (so the hash alone would spread them) stay on one pod when
    the client names the conversation the way coding agents do."""
    rig = await rig_factory(nodes(*((n, [M], [M]) for n in "abcd")), seed=5)
    pods = set()
    reasons = []
    for turn in range(6):
        body = {
            "model": M,
            "messages": [{"role": "user", "content": f"opening {turn}"}],
            "stream": False,
            **extra,
        }
        resp = await rig.post("/v1/chat/completions", body, headers=headers)
        assert resp.status == 200
        pods.add(resp.headers["X-Ollama-Backend"])
        reasons.append(resp.headers["X-Route-Reason"])
    assert len(pods) == 1
    assert reasons[1:] == ["affinity"] * 5


async def test_host_is_rewritten_and_origin_dropped(rig_factory: RigFactory) -> None:
    """A loopback-bound Ollama answers 403 to a foreign Host or Origin; the balancer fixes both."""
    rig = await rig_factory(nodes(("a", [M], [M])))
    hostile = {"Host": "ollama.example.com", "Origin": "https://chat.example.com"}
    direct = await rig.session.post(rig.node("a").url + "/api/chat", json=CHAT, headers=hostile)
    assert direct.status == 403 and await direct.read() == b""
    resp = await rig.post("/api/chat", CHAT, headers=hostile)
    assert resp.status == 200


# ---------------------------------------------------------------- auto-pull
async def test_auto_pull_holds_requests_until_the_model_is_there(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [], [])), auto_pull=True)
    results = await asyncio.gather(
        *(rig.post("/api/chat", {**CHAT, "model": M2}) for _ in range(2))
    )
    assert [r.status for r in results] == [200, 200]
    # One pulls; the other waits for it: bound to the loading pod (early binding), or held in
    # the balancer until the model is there (late binding, the default).
    reasons = sorted(r.headers["X-Route-Reason"] for r in results)
    assert reasons in (["loading", "pull"], ["pull", "resident"]), reasons
    # one pull for both requests, onto the pod with the most free room (b holds nothing)
    assert rig.node("b").stats.pulls_started == 1 and rig.node("a").stats.pulls_started == 0
    await rig.poll()
    b = rig.bal.view.snapshot.get("b")
    assert b is not None and _key(M2) in b.installed


async def test_auto_pull_off_is_404(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.post("/api/chat", {**CHAT, "model": M2})
    assert resp.status == 404
    assert rig.node("a").stats.pulls_started == 0


async def test_v1_responses_and_legacy_embeddings_are_routed(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M, EMB], [M, EMB])))
    resp = await rig.post("/v1/responses", {"model": M, "input": "hi"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["object"] == "response"
    resp = await rig.post("/api/embeddings", {"model": EMB, "prompt": "hi"})
    assert resp.status == 200 and len((await resp.json())["embedding"]) > 0
    resp = await rig.post("/api/show", {"model": M})
    assert resp.status == 200 and "details" in await resp.json()
    assert rig.bal.ledger.total_inflight() == 0
