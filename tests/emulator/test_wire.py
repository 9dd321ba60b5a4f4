"""Byte-level wire behaviour: bodies, content types, framing and field order (docs/ollama.md §1, §2)."""

# ruff: noqa: E501  (the error table reads best one case per line)

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest

from ollama_emulator import EmulatedNode
from tests.harness.emulator import MakeNode

JSON_CT = "application/json; charset=utf-8"
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
NATIVE_METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


async def test_root_head_and_version(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    async with http.get(node.url + "/") as r:
        assert (r.status, await r.text()) == (200, "Ollama is running")
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    async with http.head(node.url + "/") as r:
        assert r.status == 200
    async with http.head(node.url + "/api/version") as r:
        assert r.status == 200
    async with http.get(node.url + "/api/version") as r:
        assert await r.json() == {"version": "0.33.0"}


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        pytest.param("GET", "/nope", 404, "404 page not found", id="unknown path"),
        pytest.param("GET", "/v1/models/ns/m", 404, "404 page not found", id="model id with slash"),
        pytest.param("GET", "/api/chat", 405, "405 method not allowed", id="GET on POST route"),
        pytest.param("POST", "/api/tags", 405, "405 method not allowed", id="POST on GET route"),
        pytest.param("HEAD", "/api/ps", 405, "", id="HEAD on ps"),
    ],
)
async def test_gin_plain_text_errors(
    node: EmulatedNode, http: aiohttp.ClientSession, method: str, path: str, status: int, text: str
) -> None:
    async with http.request(method, node.url + path) as r:
        assert r.status == status
        assert r.headers["Content-Type"] == "text/plain"
        assert await r.text() == text


def _err(message: str) -> dict[str, Any]:
    return {"error": message}


def _oai(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        pytest.param("/api/generate", b"", 400, _err("missing request body"), id="empty body"),
        pytest.param("/api/chat", b"", 400, _err("missing request body"), id="empty body chat"),
        pytest.param("/api/chat", {}, 400, _err("model is required"), id="chat without model"),
        pytest.param("/api/generate", {"prompt": "x"}, 404, _err("model '' not found"), id="generate without model"),
        pytest.param("/api/generate", {"model": "nope", "prompt": "x"}, 404, _err("model 'nope' not found"), id="generate unknown"),
        pytest.param("/api/chat", {"model": "Nope:X", "messages": [{"role": "user", "content": "x"}]}, 404, _err("model 'Nope:X' not found"), id="chat unknown echoes name"),
        pytest.param("/api/chat", {"model": "llama3.2", "messages": "hi"}, 400, _err("json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"), id="messages not a list"),
        pytest.param("/api/chat", {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]}, 400, _err('"nomic-embed-text" does not support chat'), id="chat on embedding model"),
        pytest.param("/api/chat", {"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, _err("registry.ollama.ai/library/tiny:1b does not support tools"), id="tools unsupported"),
        pytest.param("/api/generate", {"model": "tiny:1b", "prompt": "x", "think": True}, 400, _err('"tiny:1b" does not support thinking'), id="think unsupported"),
        pytest.param("/api/generate", {"model": "llama3.2", "prompt": "x", "keep_alive": "3600"}, 400, _err('time: missing unit in duration "3600"'), id="keep_alive no unit"),
        pytest.param("/api/generate", {"model": "llama3.2", "prompt": "x", "options": {"num_predict": "x"}}, 500, _err('option "num_predict" must be of type integer'), id="option of wrong type"),
        pytest.param("/api/generate", b"{bad", 400, _err("invalid character 'b' looking for beginning of object key string"), id="invalid json"),
        pytest.param("/api/embed", {"model": "nope", "input": "x"}, 404, _err('model "nope" not found, try pulling it first'), id="embed unknown"),
        pytest.param("/api/embeddings", {"model": "nope", "prompt": "x"}, 404, _err('model "nope" not found, try pulling it first'), id="embeddings unknown"),
        pytest.param("/api/embed", {"model": "nomic-embed-text", "input": [1]}, 400, _err("invalid input type"), id="embed non-string input"),
        pytest.param("/api/show", {"model": "nope"}, 404, _err("model 'nope:latest' not found"), id="show unknown"),
        pytest.param("/api/pull", {"model": "bad name"}, 400, _err("invalid model name"), id="pull invalid name"),
        pytest.param("/api/copy", {"source": "nope", "destination": "x"}, 404, _err('model "nope" not found'), id="copy unknown"),
        pytest.param("/api/copy", {"source": "llama3.2", "destination": "a b"}, 400, _err('destination "a b" is invalid'), id="copy invalid destination"),
        pytest.param("/v1/chat/completions", {"model": "llama3.2", "messages": []}, 400, _oai("[] is too short - 'messages'", "invalid_request_error"), id="v1 empty messages"),
        pytest.param("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, _oai("model 'nope' not found", "not_found_error"), id="v1 unknown model"),
        pytest.param("/v1/embeddings", {"model": "nomic-embed-text", "input": []}, 400, _oai("invalid input", "invalid_request_error"), id="v1 embeddings empty list"),
    ],
)  # fmt: skip
async def test_error_bodies(
    node: EmulatedNode,
    http: aiohttp.ClientSession,
    path: str,
    body: bytes | dict[str, Any],
    status: int,
    expected: dict[str, Any],
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(node.url + path, data=data) as r:
        assert r.status == status
        assert r.headers["Content-Type"] == JSON_CT
        assert json.loads(await r.read()) == expected


async def test_delete_errors_and_success(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    async with http.delete(node.url + "/api/delete", json={"model": "nope"}) as r:
        assert (r.status, await r.json()) == (404, {"error": "model 'nope' not found"})
    async with http.delete(node.url + "/api/delete", json={"model": "TINY:1B"}) as r:
        assert (r.status, await r.read()) == (200, b"")


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == JSON_CT
        return await r.json()


async def test_load_and_unload_are_single_objects(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    loaded = await _post(http, node.url + "/api/generate", {"model": "tiny:1b"})
    assert list(loaded) == ["model", "created_at", "response", "done", "done_reason"]
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    assert RFC3339_NANO.match(loaded["created_at"])
    assert node.scheduler.runner_for(node.catalogue["tiny:1b"]) is not None
    unloaded = await _post(
        http, node.url + "/api/chat", {"model": "tiny:1b", "messages": [], "keep_alive": 0}
    )
    assert unloaded["message"] == {"role": "assistant", "content": ""}
    assert unloaded["done_reason"] == "unload"
    assert node.scheduler.runner_for(node.catalogue["tiny:1b"]) is None
    # Unloading something that is not loaded succeeds too.
    again = await _post(http, node.url + "/api/generate", {"model": "tiny:1b", "keep_alive": 0})
    assert again["done_reason"] == "unload"
    embed = await _post(http, node.url + "/api/embed", {"model": "nomic-embed-text"})
    assert embed == {"model": "nomic-embed-text", "embeddings": []}


async def test_ndjson_framing_and_final_chunk(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        node.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}
    ) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"
        raw = await r.read()
    assert raw.endswith(b"\n") and b"\n\n" not in raw
    lines = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    assert all(list(c) == ["model", "created_at", "response", "done"] for c in lines[:-1])
    final = lines[-1]
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *NATIVE_METRICS,
    ]
    assert final["done"] and final["response"] == "" and final["eval_count"] == len(lines) - 1


async def test_chat_stream_keys(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(node.url + "/api/chat", json=body) as r:
        lines = [json.loads(line) for line in (await r.read()).splitlines()]
    assert list(lines[0]) == ["model", "created_at", "message", "done"]
    assert list(lines[-1]) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        *NATIVE_METRICS,
    ]


def _sse_events(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    frames = raw.decode().split("\n\n")[:-1]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)
    return [f[len("data: ") :] for f in frames]


async def test_sse_chat_framing(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
    }
    async with http.post(node.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = _sse_events(await r.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert chunks[3]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 3
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith(
        "chatcmpl-"
    )
    assert list(chunks[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]


async def test_sse_completions_finish_on_last_text_chunk(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": True, "max_tokens": 2}
    async with http.post(node.url + "/v1/completions", json=body) as r:
        events = _sse_events(await r.read())
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and len(chunks) == 3
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert chunks[-1]["choices"][0]["text"] == ""


async def test_v1_stream_defaults_false_and_api_true(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(node.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["Content-Type"] == JSON_CT
        reply = await r.json()
    assert list(reply) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]
    async with http.post(node.url + "/api/chat", json=body) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"


async def test_ps_and_tags_field_order_and_sorting(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    await _post(http, node.url + "/api/generate", {"model": "tiny:1b", "keep_alive": "1h"})
    await _post(http, node.url + "/api/generate", {"model": "small:1b", "keep_alive": "2h"})
    async with http.get(node.url + "/api/ps") as r:
        ps = (await r.json())["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest", "small:1b", "tiny:1b"]  # forever, 2h, 1h
    assert list(ps[0]) == [
        "name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length",
    ]  # fmt: skip
    assert list(ps[0]["details"]) == [
        "parent_model", "format", "family", "families", "parameter_size", "quantization_level",
    ]  # fmt: skip
    assert ps[0]["expires_at"].startswith("23") and RFC3339_NANO.match(ps[1]["expires_at"])
    async with http.post(node.url + "/api/copy", json={"source": "tiny:1b", "destination": "zz"}):
        pass
    async with http.get(node.url + "/api/tags") as r:
        tags = (await r.json())["models"]
    assert tags[0]["name"] == "zz:latest" and tags[0]["digest"] == ps[2]["digest"]
    assert list(tags[0]) == [
        "name", "model", "modified_at", "size", "digest", "details", "capabilities",
    ]  # fmt: skip
    stamps = [t["modified_at"] for t in tags]
    assert stamps == sorted(stamps, reverse=True)


async def test_empty_node_lists(make_node: MakeNode, http: aiohttp.ClientSession) -> None:
    node = await make_node(installed=[])
    async with http.get(node.url + "/v1/models") as r:
        assert await r.json() == {"object": "list", "data": None}
    for path in ("/api/tags", "/api/ps"):
        async with http.get(node.url + path) as r:
            assert await r.json() == {"models": []}


async def test_model_echoed_verbatim_and_aliases_share_a_runner(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    body = {"model": "Library/LLAMA3.2:Latest", "prompt": "x", "stream": False}
    reply = await _post(http, node.url + "/api/generate", body)
    assert reply["model"] == "Library/LLAMA3.2:Latest"
    assert node.stats.loads_started == 0  # the resident runner served it
    async with http.get(node.url + "/api/ps") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]


async def test_go_json_escapes_html(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    async with http.post(node.url + "/api/generate", json={"model": "<b>&", "prompt": "x"}) as r:
        assert await r.read() == b'{"error":"model \'\\u003cb\\u003e\\u0026\' not found"}'
