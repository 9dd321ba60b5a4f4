"""API keys against a live balancer in front of emulated Ollama nodes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from ollama_balancer.core.auth import AuthConfigError, hash_key
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.security import SECURITY
from tests.harness.auth import CHAT, KEYS, M2, M, bearer, make
from tests.harness.fleet import RigFactory, nodes

OPENAI = {"model": M, "messages": [{"role": "user", "content": "hi"}]}
GEN = {"model": M, "prompt": "hi", "stream": False, "options": {"num_predict": 3}}


async def test_missing_and_bad_keys_are_401_in_the_clients_shape(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await make(rig_factory, tmp_path)
    resp = await rig.post("/api/chat", CHAT)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await resp.json() == {"error": "missing API key"}
    resp = await rig.post("/api/chat", CHAT, headers=bearer("wrong"))
    assert resp.status == 401 and await resp.json() == {"error": "invalid API key"}
    resp = await rig.post("/v1/chat/completions", OPENAI, headers={"X-API-Key": "wrong"})
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert err["message"] == "invalid API key" and err["type"] == "api_error"
    for path in ("/api/tags", "/api/ps", "/api/version", "/v1/models", "/nope"):
        resp = await rig.session.get(rig.url + path)
        assert resp.status == 401, path
    assert sum(n.stats.requests["/api/chat"] for n in rig.fleet.nodes) == 0


async def test_both_header_forms_work_and_upstream_never_sees_them(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    records: list[RequestRecord] = []
    rig = await make(rig_factory, tmp_path)
    rig.bal.records.append(records.append)
    resp = await rig.post("/api/chat", CHAT, headers=bearer("alice-key"))
    assert resp.status == 200, await resp.text()
    resp = await rig.post("/v1/chat/completions", OPENAI, headers={"X-API-Key": "alice-key"})
    assert resp.status == 200
    resp = await rig.session.get(rig.url + "/api/tags", headers=bearer("alice-key"))
    assert resp.status == 200
    assert [(r.path, r.client) for r in records] == [
        ("/api/chat", "alice"),
        ("/v1/chat/completions", "alice"),
        ("/api/tags", "alice"),
    ]


async def test_probes_and_metrics_need_no_key(rig_factory: RigFactory, tmp_path: Path) -> None:
    rig = await make(rig_factory, tmp_path)
    for path in ("/", "/healthz", "/readyz", "/metrics", "/-/fleet"):
        resp = await rig.session.get(rig.url + path)
        assert resp.status == 200, path


async def test_model_not_allowed_is_403(rig_factory: RigFactory, tmp_path: Path) -> None:
    rig = await make(rig_factory, tmp_path)
    resp = await rig.post("/api/chat", {**CHAT, "model": M2}, headers=bearer("bob-key"))
    assert resp.status == 403
    assert await resp.json() == {"error": f"key 'bob' may not use model '{M2}'"}
    resp = await rig.post(
        "/v1/chat/completions", {**OPENAI, "model": M2}, headers=bearer("bob-key")
    )
    assert resp.status == 403 and (await resp.json())["error"]["type"] == "api_error"
    # pin syntax and gateway prefix do not smuggle a model past the glob
    resp = await rig.post("/api/chat", {**CHAT, "model": M2 + "@a"}, headers=bearer("bob-key"))
    assert resp.status == 403
    resp = await rig.post("/api/chat", {**CHAT, "model": "ollama/" + M2}, headers=bearer("bob-key"))
    assert resp.status == 403
    resp = await rig.post("/api/chat", {**CHAT, "model": "ollama/" + M}, headers=bearer("bob-key"))
    assert resp.status == 200
    assert rig.node("a").stats.requests["/api/chat"] == 1


async def test_request_rate_limit_is_429_with_retry_after(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await make(rig_factory, tmp_path)
    for _ in range(2):
        resp = await rig.post("/api/chat", CHAT, headers=bearer("bob-key"))
        assert resp.status == 200
    resp = await rig.post("/api/chat", CHAT, headers=bearer("bob-key"))
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    assert "request rate limit" in (await resp.json())["error"]
    resp = await rig.post("/v1/chat/completions", OPENAI, headers=bearer("bob-key"))
    assert resp.status == 429 and "Retry-After" in resp.headers
    assert "request rate limit" in (await resp.json())["error"]["message"]
    # other keys are not affected
    resp = await rig.post("/api/chat", CHAT, headers=bearer("alice-key"))
    assert resp.status == 200


async def test_concurrency_limit(rig_factory: RigFactory, tmp_path: Path) -> None:
    rig = await make(rig_factory, tmp_path)
    rig.node("a").faults.slow(latency=50.0)  # 0.5 s at time_scale 0.01
    first = asyncio.ensure_future(rig.post("/api/chat", CHAT, headers=bearer("carol-key")))
    state = rig.app[SECURITY].states
    await rig.until(lambda: "carol" in state and state["carol"].inflight == 1)
    resp = await rig.post("/api/chat", CHAT, headers=bearer("carol-key"))
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert "concurrent" in (await resp.json())["error"]
    assert (await first).status == 200
    assert state["carol"].inflight == 0
    rig.node("a").faults.clear()
    assert (await rig.post("/api/chat", CHAT, headers=bearer("carol-key"))).status == 200


async def test_token_rate_limit_counts_ollama_final_metrics(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await make(rig_factory, tmp_path)
    resp = await rig.post("/api/generate", GEN, headers=bearer("dave-key"))
    assert resp.status == 200
    doc = await resp.json()
    assert doc["eval_count"] + doc["prompt_eval_count"] > 5
    resp = await rig.post("/api/generate", GEN, headers=bearer("dave-key"))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert "token rate limit" in (await resp.json())["error"]


async def test_admin_endpoints_need_an_admin_key(rig_factory: RigFactory, tmp_path: Path) -> None:
    rig = await make(rig_factory, tmp_path, admin="fanout")
    resp = await rig.post("/api/pull", {"model": M, "stream": False}, headers=bearer("alice-key"))
    assert resp.status == 403
    assert "may not call /api/pull" in (await resp.json())["error"]
    resp = await rig.session.delete(
        rig.url + "/api/delete", json={"model": M}, headers=bearer("bob-key")
    )
    assert resp.status == 403
    resp = await rig.post("/api/pull", {"model": M, "stream": False}, headers=bearer("root-key"))
    assert resp.status == 200, await resp.text()


async def test_keys_file_reloads_on_a_kubernetes_style_symlink_swap(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    # A Secret volume: keys.yaml -> ..data/keys.yaml, ..data -> ..v1; an update
    # writes ..v2 and atomically renames a new ..data symlink over the old one.
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "keys.yaml").write_text(KEYS)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/keys.yaml", tmp_path / "keys.yaml")
    rig = await make(rig_factory, tmp_path)
    assert (await rig.post("/api/chat", CHAT, headers=bearer("alice-key"))).status == 200
    assert (await rig.post("/api/chat", CHAT, headers=bearer("erin-key"))).status == 401

    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "keys.yaml").write_text(
        f"keys:\n  - name: erin\n    key_sha256: {hash_key('erin-key')}\n"
    )
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")

    async def status(key: str) -> int:
        return (await rig.post("/api/chat", CHAT, headers=bearer(key))).status

    async with asyncio.timeout(5):
        while await status("erin-key") != 200:
            await asyncio.sleep(0.05)
    assert await status("alice-key") == 401

    # a broken update keeps the last good keys
    (tmp_path / "..v3").mkdir()
    (tmp_path / "..v3" / "keys.yaml").write_text("keys: [oops")
    os.symlink("..v3", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    await asyncio.sleep(0.3)
    assert await status("erin-key") == 200


async def test_unreadable_keys_file_fails_start(rig_factory: RigFactory, tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        await rig_factory(nodes(("a", [M], [M])), auth_file=str(tmp_path / "missing.yaml"))


async def test_keys_never_reach_logs(
    rig_factory: RigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ollama_wire.logs import configure_logging

    configure_logging("json", "debug")
    rig = await make(rig_factory, tmp_path)
    await rig.post("/api/chat", CHAT, headers=bearer("alice-key"))
    await rig.post("/api/chat", CHAT, headers=bearer("not-a-key-zzz"))
    await rig.post("/api/chat", CHAT, headers={"X-API-Key": "bob-key"})
    out = capsys.readouterr()
    text = out.out + out.err
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "request" and e.get("client") == "alice" for e in events)
    for secret in ("alice-key", "not-a-key-zzz", "bob-key", hash_key("alice-key")):
        assert secret not in text
