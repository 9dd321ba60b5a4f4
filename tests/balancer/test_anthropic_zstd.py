"""Anthropic's Messages API and zstd bodies through the balancer.

The official ``anthropic`` SDK talks to the balancer exactly as to one Ollama: messages
and streams pass through byte for byte; the balancer's own refusals come in Anthropic's
error shape.  zstd bodies are decoded once where Ollama decodes them (the ``/v1`` paths).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import zstandard

from ollama_balancer.core.auth import hash_key
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def rig(rig_factory: RigFactory, tmp_path: Path) -> Rig:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: claude\n    key_sha256: {hash_key('claude-key')}\n")
    return await rig_factory(nodes(("a", [M], [M]), ("b", [M], [])), auth_file=str(keys))


@pytest.fixture
async def claude(rig: Rig) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=rig.url, api_key="claude-key", max_retries=0
    ) as client:
        yield client


async def test_create_and_stream_through_the_balancer(
    rig: Rig, claude: anthropic.AsyncAnthropic
) -> None:
    msg = await claude.messages.create(model=M, max_tokens=64, messages=HI)
    assert msg.role == "assistant" and msg.content and msg.usage.output_tokens > 0
    events: list[str] = []
    async with claude.messages.stream(model=M, max_tokens=64, messages=HI) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert rig.node("a").stats.requests["/v1/messages"] == 2  # the warm pod


async def test_unknown_model_and_auth_refusals_in_anthropics_shape(
    rig: Rig, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nope:1b", max_tokens=8, messages=HI)
    body: Any = missing.value.body
    assert body["type"] == "error"
    assert body["error"] == {"type": "not_found_error", "message": "model 'nope:1b' not found"}
    async with anthropic.AsyncAnthropic(base_url=rig.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await bad.messages.create(model=M, max_tokens=8, messages=HI)
    body = denied.value.body
    assert body["type"] == "error" and body["error"]["message"] == "invalid API key"


async def test_missing_max_tokens_is_ollamas_400(rig: Rig) -> None:
    resp = await rig.post(
        "/v1/messages", {"model": M, "messages": HI}, headers={"X-API-Key": "claude-key"}
    )
    assert resp.status == 400
    doc = await resp.json()
    assert doc["type"] == "error" and "max_tokens" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", {"model": M, "messages": HI}, id="chat"),
        pytest.param("/v1/completions", {"model": M, "prompt": "Hi"}, id="completions"),
        pytest.param("/v1/messages", {"model": M, "max_tokens": 8, "messages": HI}, id="messages"),
        pytest.param("/v1/responses", {"model": M, "input": "Hi"}, id="responses"),
        pytest.param("/v1/embeddings", {"model": "all-minilm", "input": "Hi"}, id="embeddings"),
    ],
)
async def test_zstd_bodies_on_every_v1_path(rig: Rig, path: str, body: dict[str, Any]) -> None:
    raw = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    resp = await rig.session.post(
        rig.url + path,
        data=raw,
        headers={
            "Content-Encoding": "zstd",
            "Content-Type": "application/json",
            "X-API-Key": "claude-key",
        },
    )
    text = await resp.text()
    if path == "/v1/embeddings":
        assert resp.status == 404 and "all-minilm" in text  # routed by the model inside
    else:
        assert resp.status == 200, text


async def test_zstd_refused_like_ollama(rig: Rig) -> None:
    raw = zstandard.ZstdCompressor().compress(json.dumps({"model": M, "messages": HI}).encode())
    headers = {"Content-Encoding": "zstd", "X-API-Key": "claude-key"}
    resp = await rig.session.post(rig.url + "/api/chat", data=raw, headers=headers)
    assert resp.status == 400
    assert "invalid JSON" in (await resp.json())["error"]
    garbage = await rig.session.post(rig.url + "/v1/messages", data=b"not zstd", headers=headers)
    assert garbage.status == 400
    assert await garbage.json() == {"error": "invalid input: magic number mismatch"}
