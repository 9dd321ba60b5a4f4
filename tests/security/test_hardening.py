"""Hostile or broken input: the right 4xx/503 and a JSON error, never a 500, a hang or a crash.

Raw sockets produce what aiohttp's client refuses to send (huge headers,
dribbled bytes, garbage).  After every case the balancer must still serve.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def make(rig_factory: RigFactory, **kw: Any) -> Rig:
    return await rig_factory(nodes(("a", [M], [M])), **kw)


def addr(rig: Rig) -> tuple[str, int]:
    u = urlsplit(rig.url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


async def exchange(
    rig: Rig, data: bytes, *, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response until the server closes or Content-Length is met."""
    reader, writer = await asyncio.open_connection(*addr(rig))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


async def still_serves(rig: Rig) -> None:
    resp = await rig.post("/api/chat", CHAT)
    assert resp.status == 200


def http(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


async def test_huge_header_is_a_clean_400(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory, max_header_bytes=4096)
    big = "X-Big: " + "a" * 100_000 + "\r\n"
    status, _, _ = await exchange(rig, http("POST", "/api/chat", b"{}", big))
    assert status == 400
    status, _, _ = await exchange(rig, http("GET", "/api/tags?" + "q" * 100_000))
    assert status == 400
    many = "".join(f"X-{i}: v\r\n" for i in range(1000))
    status, _, _ = await exchange(rig, http("GET", "/api/tags", headers=many))
    assert status == 400
    await still_serves(rig)


async def test_garbage_instead_of_http(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory)
    status, _, _ = await exchange(
        rig, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
    )
    assert status == 400
    await still_serves(rig)


async def test_slowloris_headers_are_cut_off(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory, keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection(*addr(rig))
    t0 = time.monotonic()
    request = http("GET", "/api/tags")
    closed = False
    try:
        for i in range(len(request) - 2):  # never finish the headers
            writer.write(request[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof() or writer.is_closing():
                closed = True
                break
            try:
                data = await asyncio.wait_for(reader.read(1), 0.001)
            except TimeoutError:
                continue
            if data == b"":
                closed = True
                break
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    elapsed = time.monotonic() - t0
    assert closed, "the server kept a dribbling client forever"
    assert 0.4 <= elapsed < 3.0, elapsed
    await still_serves(rig)


async def test_slow_body_gets_408_json(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory, client_body_timeout=0.5)
    reader, writer = await asyncio.open_connection(*addr(rig))
    body = json.dumps(CHAT).encode()
    writer.write(http("POST", "/api/chat", body)[: -len(body) + 5])  # 5 body bytes only
    await writer.drain()
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        status, headers, payload = await read_response(reader)
    writer.close()
    assert status == 408
    assert 0.4 <= time.monotonic() - t0 < 3.0
    assert headers["content-type"].startswith("application/json")
    assert "not received within 0.5s" in json.loads(payload)["error"]
    assert rig.node("a").stats.requests["/api/chat"] == 0
    # OpenAI shape on /v1, chunked body this time
    reader, writer = await asyncio.open_connection(*addr(rig))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"mod\r\n'
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status, _, payload = await read_response(reader)
    writer.close()
    assert status == 408 and json.loads(payload)["error"]["type"] == "api_error"
    await still_serves(rig)


async def test_connection_cap_answers_503_json(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory, max_connections=3)
    idle = [await asyncio.open_connection(*addr(rig)) for _ in range(4)]
    await asyncio.sleep(0.1)
    try:
        status, headers, payload = await exchange(rig, http("GET", "/api/tags"))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert "too many open connections" in json.loads(payload)["error"]
    finally:
        for _, w in idle:
            w.close()
    await asyncio.sleep(0.2)
    await still_serves(rig)


@pytest.mark.parametrize(
    "body, fragment",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "invalid JSON", id="deep array"),
        pytest.param(
            b'{"model":"x","a":' + b'{"b":' * 100 + b"1" + b"}" * 100 + b"}",
            "nested deeper",
            id="nested beyond 64",
        ),
        pytest.param(b"\xff\xfe{}", "invalid JSON", id="not utf-8"),
        pytest.param(b'{"model": 5}', "model is required", id="model not a string"),
        pytest.param(b"", "missing request body", id="empty"),
        pytest.param(b'{"model":"../../etc/passwd"}', "invalid model name", id="path traversal"),
        pytest.param(b'{"model":"a/b/c/d"}', "invalid model name", id="too many parts"),
        pytest.param(b'{"model":"http://evil/x"}', "invalid model name", id="url"),
        pytest.param(b'{"model":"x\\u0000y"}', "invalid model name", id="nul byte"),
        pytest.param(b'{"model":" llama3"}', "invalid model name", id="leading space"),
        pytest.param(b'{"model":"llama3:"}', "invalid model name", id="empty tag"),
        pytest.param(b'{"model":"%2e%2e/x"}', "invalid model name", id="percent dots"),
    ],
)
async def test_bad_bodies_are_400_json(rig_factory: RigFactory, body: bytes, fragment: str) -> None:
    rig = await make(rig_factory)
    for path in ("/api/chat", "/v1/chat/completions"):
        status, headers, payload = await exchange(rig, http("POST", path, body))
        assert status == 400, (path, payload[:200])
        assert headers["content-type"].startswith("application/json")
        err = json.loads(payload)["error"]
        message = err["message"] if path.startswith("/v1/") else err
        assert fragment in message
    assert rig.node("a").stats.requests["/api/chat"] == 0


async def test_body_too_large_is_413_json(rig_factory: RigFactory) -> None:
    rig = await make(rig_factory, max_body_bytes=1024)
    status, _, payload = await exchange(rig, http("POST", "/api/chat", b"x" * 5000))
    assert status == 413 and "limit is 1024" in json.loads(payload)["error"]
    # a lying Content-Length larger than the limit, with no body behind it
    status, _, payload = await exchange(
        rig, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{"
    )
    assert status == 413
    await still_serves(rig)


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("FOO", "/api/chat", 400),  # aiohttp's parser refuses unknown methods
        ("GET", "/api/chat", 405),
        ("PUT", "/api/generate", 405),
        ("GET", "/api/../../etc/passwd", 404),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
        ("GET", "/api/nope", 404),
        ("GET", "//api//tags", 404),
    ],
)
async def test_unknown_methods_and_paths_like_ollama(
    rig_factory: RigFactory, method: str, path: str, status: int
) -> None:
    rig = await make(rig_factory)
    got, _, payload = await exchange(rig, http(method, path))
    assert got == status, payload
    await still_serves(rig)
