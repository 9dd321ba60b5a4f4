"""Admin endpoints through the balancer: refusals that say what is allowed, and a fan-out
whose answers front ends read as one Ollama's (docs/ollama.md §2.4, §2.7)."""

# ruff: noqa: E501  (tables read best one case per line)

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from ollama_balancer.admin import merge_answers, refusal
from ollama_balancer.core.record import RequestRecord
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
SMALL = "all-minilm"
GGUF = b"GGUF" + bytes(range(256)) * 32


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ pure
@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param([("a", 200, ""), ("b", 200, "")], (200, ""), id="all ok"),
        pytest.param([("a", 200, ""), ("b", 201, "")], (201, ""), id="one stored: 201"),
        pytest.param([("a", 200, ""), ("b", 404, "model 'x' not found")], (200, ""), id="missing on one pod is fine"),
        pytest.param([("a", 404, "model 'x' not found"), ("b", 404, "model 'x' not found")], (404, "model 'x' not found"), id="missing everywhere"),
        pytest.param([("a", 400, "invalid model name"), ("b", 400, "invalid model name")], (400, "invalid model name"), id="refused alike"),
        pytest.param([("a", 200, ""), ("b", 500, "disk full")], (500, "delete done on 1, failed on 1 of 2 pods: b: disk full"), id="partly failed"),
        pytest.param([("a", 0, "ClientConnectorError: refused"), ("b", 500, "disk full")], (500, "delete failed on 2 of 2 pods: a: ClientConnectorError: refused; b: disk full"), id="failed differently"),
    ],
)  # fmt: skip
def test_merge_answers(answers: list[tuple[str, int, str]], expected: tuple[int, str]) -> None:
    assert merge_answers(answers, "delete") == expected


@pytest.mark.parametrize("admin", ["deny", "fanout"])
def test_refusals_say_what_the_setting_allows(admin: str) -> None:
    text = refusal("/api/push", admin)
    assert "/api/pull, /api/delete, /api/create, /api/copy and /api/blobs" in text
    assert "never /api/push" in text
    if admin == "deny":
        assert "admin: deny" in text and "ModelPool" in text and "would send" in text
    else:
        assert "admin: fanout sends" in text


# ------------------------------------------------------------------ refusals, live
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/api/pull", {"model": M}, id="pull"),
        pytest.param("DELETE", "/api/delete", {"model": M}, id="delete"),
        pytest.param("POST", "/api/create", {"model": "x", "from": M}, id="create"),
        pytest.param("POST", "/api/copy", {"source": M, "destination": "x"}, id="copy"),
        pytest.param("POST", "/api/push", {"model": M}, id="push"),
        pytest.param("POST", "/api/blobs/" + digest(GGUF), None, id="blob upload"),
    ],
)
async def test_deny_refuses_every_admin_path(
    rig_factory: RigFactory, method: str, path: str, body: Any
) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    resp = await rig.session.request(method, rig.url + path, json=body)
    assert resp.status == 403
    assert (await resp.json())["error"] == refusal(path, "deny")
    assert rig.node("a").stats.requests[path] == 0


async def test_push_is_refused_under_fanout(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), admin="fanout")
    resp = await rig.post("/api/push", {"model": M})
    assert resp.status == 403
    assert (await resp.json())["error"] == refusal("/api/push", "fanout")


# ------------------------------------------------------------------ pull
async def open_webui_pull(session: aiohttp.ClientSession, url: str, model: str) -> dict[str, Any]:
    """Read a pull the way Open WebUI does: a toast per status without a digest,
    a progress bar per digest from ``completed / total``, line by line as it streams."""
    toasts: list[str] = []
    bars: dict[str, list[tuple[int, int]]] = {}
    async with session.post(url + "/api/pull", json={"model": model}) as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = json.loads(raw)
            assert "error" not in line, line
            if "digest" in line:
                bars.setdefault(line["digest"], []).append(
                    (line.get("completed", 0), line.get("total", 0))
                )
            else:
                toasts.append(line["status"])
    return {"toasts": toasts, "bars": bars}


async def test_pull_fanout_reads_like_one_ollama(rig_factory: RigFactory) -> None:
    configs = [
        NodeConfig(name="fast", host="127.0.0.10", pull_bandwidth=2e9),
        NodeConfig(name="slow", host="127.0.0.11", pull_bandwidth=2e8),
    ]
    rig = await rig_factory(configs, admin="fanout")
    merged = await open_webui_pull(rig.session, rig.url, M)
    # One Ollama pulling the same model, for reference.
    async with EmulatedFleet(
        FleetConfig(nodes=[NodeConfig(name="ref", host="127.0.0.12")], time_scale=0.01)
    ) as ref:
        single = await open_webui_pull(rig.session, ref.nodes[0].url, M)
    assert merged["toasts"] == single["toasts"]  # each status once, in Ollama's order
    assert merged["toasts"][0] == "pulling manifest" and merged["toasts"][-1] == "success"
    assert list(merged["bars"]) == list(single["bars"])  # layers in manifest order
    for blob, progress in merged["bars"].items():
        size = single["bars"][blob][-1][1]
        assert {total for _, total in progress} == {size}  # one copy's size, not the sum
        done = [completed for completed, _ in progress]
        assert done == sorted(done) and done[-1] == size  # never backwards, ends full
    await rig.poll()
    for state in rig.bal.view.snapshot.backends:
        assert any(m.name == M for m in state.installed.values()), state.backend.name


async def test_pull_fanout_follows_the_slowest_pod(rig_factory: RigFactory) -> None:
    """While the slow pod is behind, the bar shows its bytes, not the fast pod's."""
    configs = [
        NodeConfig(name="fast", host="127.0.0.10", pull_bandwidth=5e10),
        NodeConfig(name="slow", host="127.0.0.11", pull_bandwidth=5e7),
    ]
    # 0.02: the emulated download's 0.05 s ticks are 1 ms real.  At 0.01 they are 0.5 ms,
    # which uvloop (millisecond timers) rounds to 0: the slow pod then finishes its 2 GB
    # inside one progress interval and there is no partial bar to check.
    rig = await rig_factory(configs, admin="fanout", time_scale=0.02)
    slow = rig.node("slow")
    partial = 0
    async with rig.session.post(rig.url + "/api/pull", json={"model": M}) as resp:
        async for raw in resp.content:
            line = json.loads(raw)
            if line.get("completed") and line["completed"] < line["total"]:
                partial += 1
                # the merged bar never runs ahead of what the slow pod has on disk
                assert line["completed"] <= slow.puller.blobs.get(line["digest"], 0)
    assert resp.status == 200 and partial > 0


async def test_pull_fanout_names_the_pod_that_failed(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    rig.node("b").faults.fail_next(status=500, message="disk full", paths="/api/pull")
    resp = await rig.post("/api/pull", {"model": SMALL})
    lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert resp.status == 200
    assert lines[-1] == {"error": "pull done on 1, failed on 1 of 2 pods: b: disk full"}
    assert {"status": "success"} not in lines
    assert rig.node("a").library.find(SMALL) is not None


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param({"model": SMALL, "stream": False}, 200, {"status": "success"}, id="stream false"),
        pytest.param({"model": "bad name!"}, 400, {"error": "invalid model name"}, id="refused before streaming"),
    ],
)  # fmt: skip
async def test_pull_fanout_single_answers(
    rig_factory: RigFactory, body: Any, status: int, expected: Any
) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    resp = await rig.post("/api/pull", body)
    assert (resp.status, await resp.json()) == (status, expected)


async def test_unknown_model_fails_once_like_one_ollama(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    resp = await rig.post("/api/pull", {"model": "no-such-model"})
    lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]


# ------------------------------------------------------------------ blobs + create
def on_every_pod(rig: Rig, model: str) -> bool:
    return all(node.library.find(model) is not None for node in rig.fleet.nodes)


async def test_ollama_create_from_a_file_reaches_every_pod(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    """``ollama create`` through the balancer: HEAD, upload, create, on three pods."""
    rig = await rig_factory(nodes(("a", [], []), ("b", [], []), ("c", [], [])), admin="fanout")
    d = digest(GGUF)
    assert (await rig.session.head(f"{rig.url}/api/blobs/{d}")).status == 404
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(GGUF)
    client = ollama.AsyncClient(host=rig.url)
    try:
        assert await client.create_blob(model_file) == d
        for node in rig.fleet.nodes:  # stored everywhere before the create is sent
            assert node.puller.has_blob(d), node.name
        assert (await rig.session.head(f"{rig.url}/api/blobs/{d}")).status == 200
        progress = await client.create(model="team/assistant", files={"model.gguf": d}, stream=True)
        statuses = [p.status async for p in progress]
    finally:
        await client._client.aclose()
    assert statuses == ["parsing GGUF", f"using existing layer {d}", "writing manifest", "success"]
    assert on_every_pod(rig, "team/assistant")
    digests = {n.library.find("team/assistant").spec.digest for n in rig.fleet.nodes}  # type: ignore[union-attr]
    assert len(digests) == 1


async def test_blob_missing_on_one_pod_is_missing(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    d = digest(GGUF)
    async with aiohttp.ClientSession() as http:  # straight to pod a only
        assert (await http.post(f"{rig.node('a').url}/api/blobs/{d}", data=GGUF)).status == 201
    assert (await rig.session.head(f"{rig.url}/api/blobs/{d}")).status == 404
    resp = await rig.session.post(f"{rig.url}/api/blobs/{d}", data=GGUF)
    assert resp.status == 201  # stored on b, already on a
    assert (await rig.session.head(f"{rig.url}/api/blobs/{d}")).status == 200
    bad = await rig.session.post(f"{rig.url}/api/blobs/{d}", data=b"other")
    assert bad.status == 200  # every pod has it now: the body is not even read
    other = digest(b"other!")
    bad = await rig.session.post(f"{rig.url}/api/blobs/{other}", data=b"other")
    assert bad.status == 400
    assert (await bad.json())["error"].startswith(f'digest mismatch, expected "{other}"')


async def test_create_from_a_model_everywhere(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], []), ("c", [], [])), admin="fanout")
    resp = await rig.post("/api/create", {"model": "helper", "from": M})
    lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert lines[-1] == {"status": "success"}
    statuses = [x["status"] for x in lines if "digest" not in x]
    assert len(statuses) == len(set(statuses))  # c pulled the base first; said once
    assert on_every_pod(rig, "helper")


async def test_create_refused_alike_is_answered_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [], []), ("b", [], [])), admin="fanout")
    resp = await rig.post("/api/create", {"model": "x"})
    assert resp.status == 400
    assert await resp.json() == {"error": "neither 'from' or 'files' was specified"}


async def test_create_pinned_to_one_pod(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], [])), admin="fanout")
    body = {"model": "only-a", "from": M, "stream": False}
    resp = await rig.post("/api/create", body, headers={"X-Ollama-Backend": "a"})
    assert (resp.status, await resp.json()) == (200, {"status": "success"})
    assert rig.node("a").library.find("only-a") and not rig.node("b").library.find("only-a")


# ------------------------------------------------------------------ copy
async def test_copy_where_the_model_is(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], []), ("c", [], [])), admin="fanout")
    resp = await rig.post("/api/copy", {"source": M, "destination": "claude-3-5-sonnet"})
    assert resp.status == 200
    has = [n.name for n in rig.fleet.nodes if n.library.find("claude-3-5-sonnet")]
    assert has == ["a", "b"]
    resp = await rig.post("/api/copy", {"source": "nowhere", "destination": "y"})
    assert (resp.status, await resp.json()) == (404, {"error": 'model "nowhere" not found'})


# ------------------------------------------------------------------ where a fan-out went
def fan_out_records(rig: Rig) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    rig.bal.records.append(lambda r: seen.append(r) if r.kind == "admin" else None)
    return seen


async def test_each_fan_out_names_its_pods_and_their_outcomes(rig_factory: RigFactory) -> None:
    """pull, copy, delete, blobs and create: the answer lists the pods in X-Ollama-Backend,
    the log line names them, counts them and says what each did (before: an empty backend
    and 0 attempts)."""
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], []), ("c", [], [])), admin="fanout")
    log = fan_out_records(rig)
    d = digest(GGUF)
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/api/pull", {"model": SMALL, "stream": False}),
        ("POST", "/api/copy", {"source": M, "destination": "helper"}),
        ("DELETE", "/api/delete", {"model": "helper"}),
        ("HEAD", f"/api/blobs/{d}", None),
        ("POST", f"/api/blobs/{d}", GGUF),
        ("POST", "/api/create", {"model": "team/x", "files": {"m.gguf": d}}),
    ]
    for method, path, body in calls:
        kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with rig.session.request(method, rig.url + path, **kw) as resp:
            await resp.read()
            assert resp.status < 500, (path, resp.status)
            assert resp.headers["X-Ollama-Backend"] == "a,b,c", path
    await rig.until(lambda: len(log) == len(calls))
    for record, (_, path, _) in zip(log, calls, strict=True):
        assert (record.backend, record.attempts) == ("a,b,c", 3), path
        assert set(record.outcomes) == {"a", "b", "c"}, path
    copy, delete, head = log[1], log[2], log[3]
    assert copy.outcomes == {
        "a": "done",
        "b": "done",
        "c": 'answered 404: model "llama3.2:3b" not found',
    }
    assert delete.outcomes["a"] == "done" and delete.outcomes["c"].startswith("answered 404")
    assert set(head.outcomes.values()) == {f'answered 404: blob "{d}" not found'}
    assert set(log[0].outcomes.values()) == set(log[5].outcomes.values()) == {"done"}


async def test_a_pod_that_failed_is_named_in_the_log_and_the_answer(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], [])), admin="fanout")
    log = fan_out_records(rig)
    await rig.node("b").stop_listening()
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            await client.copy(M, "helper")
    assert err.value.status_code == 500 and "b: " in err.value.error
    await rig.until(lambda: bool(log))
    assert log[0].outcomes["a"] == "done" and log[0].outcomes["b"].startswith("unreachable: ")
    await rig.node("b").start_listening()
