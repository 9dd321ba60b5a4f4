"""The proxy's own HTTP/1.1 client (upstream/http11.py) against real loopback servers that answer
with exact bytes: framing, keep-alive, broken and invalid answers, flow control."""

from __future__ import annotations

import asyncio

import pytest

from ollama_balancer.upstream.errors import ConnectError, Disconnected, ProtocolError
from ollama_balancer.upstream.http11 import HIGH_WATER, Http11Pool, Http11Response
from tests.harness.rawhttp import Answer, read_request, server


def pool() -> Http11Pool:
    return Http11Pool(connect_timeout=2.0, keepalive=30.0)


async def body(resp: Http11Response) -> bytes:
    parts = []
    while chunk := await resp.readany():
        parts.append(chunk)
    return b"".join(parts)


def keep_alive(*answers: bytes, seen: list[bytes] | None = None) -> Answer:
    """Answer each request on the connection with the next of ``answers``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for raw in answers:
            request = await read_request(reader)
            if seen is not None:
                seen.append(request)
            writer.write(raw)
            await writer.drain()
        await reader.read()  # until the client closes

    return answer


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'6\r\n{"a":1\r\n4\r\n}\n{}\r\n0\r\n\r\n'
)
FIXED = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    b'{"error":1}'
)


async def test_request_bytes_framing_and_reuse() -> None:
    seen: list[bytes] = []
    async with server(keep_alive(CHUNKED, FIXED, seen=seen)) as (url, _):
        p = pool()
        resp = await p.post(url, "/api/chat?x=1", {"Content-Type": "application/json"}, b"{}")
        assert (resp.status, resp.reason, resp.chunked) == (200, "OK", True)
        assert resp.content_type == "application/x-ndjson" and resp.content_length is None
        assert await body(resp) == b'{"a":1}\n{}'
        resp.close()
        again = await p.post(url, "/api/show", {}, b'{"model":"x"}')
        assert (again.status, again.content_length, again.chunked) == (404, 11, False)
        assert again.header("content-type") == "application/json"
        assert await again.read() == b'{"error":1}'
        again.close()
        p.close()
    port = url.rsplit(":", 1)[1]
    assert seen[0] == (
        b"POST /api/chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert seen[1].endswith(b'Content-Length: 13\r\n\r\n{"model":"x"}')  # same connection


async def test_connection_close_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(closing)
        await writer.drain()

    async with server(answer) as (url, _):
        p = pool()
        for _ in range(2):
            resp = await p.post(url, "/", {}, b"")
            assert await resp.read() == b"ok"
            resp.close()
        p.close()
    assert connections == 2


async def test_body_until_close_without_length() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with server(answer) as (url, _):
        p = pool()
        resp = await p.post(url, "/", {}, b"")
        assert await body(resp) == b"all of it"
        resp.close()
        p.close()


async def test_server_gone_mid_body_is_an_error_after_the_bytes_it_sent() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        writer.transport.abort()

    async with server(answer) as (url, _):
        p = pool()
        resp = await p.post(url, "/", {}, b"")
        assert await resp.readany() == b"abc"
        with pytest.raises(Disconnected):
            await resp.readany()
        resp.close()
        p.close()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"garbage\r\n\r\n", id="not http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", id="bad length"),
    ],
)
async def test_invalid_answers_are_protocol_errors(answer: bytes) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async with server(respond) as (url, _):
        p = pool()
        with pytest.raises(ProtocolError):
            await p.post(url, "/", {}, b"")
        p.close()


async def test_refused_connection_is_a_connect_error() -> None:
    async with server(keep_alive()) as (url, _):
        pass  # closed: nothing listens there any more
    p = pool()
    with pytest.raises(ConnectError):
        await p.post(url, "/", {}, b"")
    p.close()


async def test_header_with_a_line_break_is_refused() -> None:
    async with server(keep_alive(FIXED)) as (url, _):
        p = pool()
        with pytest.raises(ValueError, match="line break"):
            await p.post(url, "/", {"X-Evil": "a\r\nHost: other"}, b"")
        p.close()


async def test_closing_early_aborts_the_connection() -> None:
    """What the proxy does when its client leaves: the pod sees the connection go."""
    gone = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await reader.read()  # returns at EOF: the client went away
        gone.set()

    async with server(answer) as (url, _):
        p = pool()
        resp = await p.post(url, "/", {}, b"")
        assert await resp.readany() == b"a"
        resp.close()
        async with asyncio.timeout(5):
            await gone.wait()
        p.close()


async def test_a_slow_reader_pauses_the_pod_and_loses_nothing() -> None:
    size = HIGH_WATER * 4
    payload = bytes(range(256)) * (size // 256)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + payload)
        await writer.drain()
        await reader.read()

    async with server(answer) as (url, _):
        p = pool()
        resp = await p.post(url, "/", {}, b"")
        conn = resp._conn
        async with asyncio.timeout(5):
            while not conn.paused:  # the socket's bytes pile up: reading stops
                await asyncio.sleep(0.01)
        assert conn.buffered > HIGH_WATER
        got = await body(resp)
        assert got == payload and not conn.paused
        resp.close()
        p.close()


async def test_a_kept_alive_connection_closed_while_idle_is_retried_once() -> None:
    """The pod (or a middlebox) dropped the idle connection just as the next request went
    out: not a byte came back, so it is sent again on a new connection — once."""
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(FIXED)
        await writer.drain()
        if connections == 1:
            await read_request(reader)  # the second request, on the kept-alive connection
            writer.transport.abort()  # ... is dropped unanswered
            return
        await reader.read()

    async with server(answer) as (url, _):
        p = pool()
        first = await p.post(url, "/", {}, b"1")
        assert await first.read() == b'{"error":1}'
        first.close()
        second = await p.post(url, "/", {}, b"2")
        assert second.status == 404 and await second.read() == b'{"error":1}'
        second.close()
        p.close()
    assert connections == 2


async def test_a_new_connection_dropped_unanswered_is_not_retried() -> None:
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.transport.abort()

    async with server(answer) as (url, _):
        p = pool()
        with pytest.raises(Disconnected):
            await p.post(url, "/", {}, b"")
        p.close()
    assert connections == 1


async def test_an_interim_100_continue_is_skipped() -> None:
    """A client's `Expect: 100-continue` goes upstream with the body already sent: Go's
    server answers 100 first, then the real response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + FIXED)
        await writer.drain()
        await reader.read()

    async with server(answer) as (url, _):
        p = pool()
        resp = await p.post(url, "/", {"Expect": "100-continue"}, b"x" * 2000)
        assert (resp.status, resp.content_length) == (404, 11)
        assert resp.header("Content-Type") == "application/json"
        assert await resp.read() == b'{"error":1}'
        resp.close()
        p.close()
