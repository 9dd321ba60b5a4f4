"""zstd request bodies on a live node: decoded on every ``/v1`` path Ollama decodes,
refused in Ollama's own words everywhere else (docs/anthropic.md §7)."""

# ruff: noqa: E501  (the refusal table reads best one case per line)

from __future__ import annotations

import gzip
import json
from typing import Any

import aiohttp
import pytest
import zstandard

from ollama_emulator import EmulatedNode

HI = [{"role": "user", "content": "hi"}]
ZSTD = {"Content-Encoding": "zstd", "Content-Type": "application/json"}


def zstd(doc: Any) -> bytes:
    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        pytest.param(
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": HI},
            lambda d: d["choices"][0]["message"]["content"],
            id="chat completions",
        ),
        pytest.param(
            "/v1/completions",
            {"model": "llama3.2", "prompt": "hi"},
            lambda d: d["choices"][0]["text"],
            id="completions",
        ),
        pytest.param(
            "/v1/embeddings",
            {"model": "nomic-embed-text", "input": "hi"},
            lambda d: len(d["data"][0]["embedding"]) == 768,
            id="embeddings",
        ),
        pytest.param(
            "/v1/responses",
            {"model": "llama3.2", "input": "hi"},
            lambda d: d["status"] == "completed",
            id="responses",
        ),
        pytest.param(
            "/v1/messages",
            {"model": "llama3.2", "max_tokens": 5, "messages": HI},
            lambda d: d["content"][0]["text"],
            id="messages",
        ),
    ],
)
async def test_every_v1_path_decodes_zstd(
    node: EmulatedNode, http: aiohttp.ClientSession, path: str, body: Any, check: Any
) -> None:
    async with http.post(node.url + path, data=zstd(body), headers=ZSTD) as r:
        assert r.status == 200, await r.text()
        assert check(await r.json())
    plain = await http.post(node.url + path, json=body)
    assert plain.status == 200  # the same request, uncompressed


async def test_streaming_answer_to_a_zstd_request(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    body = {"model": "llama3.2", "max_tokens": 5, "messages": HI, "stream": True}
    async with http.post(node.url + "/v1/messages", data=zstd(body), headers=ZSTD) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert (await r.read()).endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def native(message: str) -> dict[str, Any]:
    return {"error": message}


def openai(message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


CHAT = {"model": "llama3.2", "messages": HI}
MESSAGES = {"model": "llama3.2", "max_tokens": 5, "messages": HI}
BIG = {**CHAT, "messages": [{"role": "user", "content": " " * (20 << 20)}]}
LONG_WINDOW = zstandard.ZstdCompressor(
    compression_params=zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
).compress(json.dumps({**CHAT, "pad": "x" * (9 << 20)}).encode())


@pytest.mark.parametrize(
    ("path", "encoding", "data", "expected"),
    [
        pytest.param("/api/chat", "zstd", zstd(CHAT), native("invalid character '(' looking for beginning of value"), id="/api/chat never decodes"),
        pytest.param("/api/generate", "zstd", zstd({"model": "llama3.2", "prompt": "x"}), native("invalid character '(' looking for beginning of value"), id="/api/generate never decodes"),
        pytest.param("/api/embed", "zstd", zstd({"model": "nomic-embed-text", "input": "x"}), native("invalid character '(' looking for beginning of value"), id="/api/embed never decodes"),
        pytest.param("/api/chat", "gzip", gzip.compress(json.dumps(CHAT).encode()), native("invalid character '\\x1f' looking for beginning of value"), id="gzip is not decoded either"),
        pytest.param("/v1/chat/completions", "ZSTD", zstd(CHAT), openai("invalid character '(' looking for beginning of value"), id="ZSTD upper case is not zstd"),
        pytest.param("/v1/messages", "zstd", b"not zstd at all", native("invalid input: magic number mismatch"), id="undecodable: native shape even on messages"),
        pytest.param("/v1/chat/completions", "zstd", zstd(CHAT)[:-4], native("unexpected EOF"), id="cut-off frame"),
        pytest.param("/v1/chat/completions", "zstd", zstd(BIG), native("http: request body too large"), id="over 20 MiB decoded"),
        pytest.param("/v1/embeddings", "zstd", LONG_WINDOW, native("window size exceeded"), id="window over 8 MiB"),
    ],
)  # fmt: skip
async def test_refusals(
    node: EmulatedNode,
    http: aiohttp.ClientSession,
    path: str,
    encoding: str,
    data: bytes,
    expected: Any,
) -> None:
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with http.post(node.url + path, data=data, headers=headers) as r:
        assert r.status == 400
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await r.json() == expected


async def test_messages_with_upper_case_zstd_is_an_anthropic_error(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    """Not decoded, so the raw bytes reach the Anthropic middleware's JSON decoder."""
    headers = {"Content-Encoding": "ZSTD"}
    async with http.post(node.url + "/v1/messages", data=zstd(MESSAGES), headers=headers) as r:
        assert r.status == 400
        doc = await r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"] == "invalid character '(' looking for beginning of value"
