"""The one transport to the pods: which client carries what, one error tree whichever did,
its lifecycle, and the whole calls on top (a small answer, JSON, a progress stream) —
against real loopback servers that answer with exact bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.http_exceptions import BadStatusLine

from ollama_balancer.upstream import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    ErrorAnswer,
    ProtocolError,
    Transport,
    UpstreamError,
    UpstreamTimeout,
)
from ollama_balancer.upstream.calls import call, get_json, progress
from ollama_balancer.upstream.errors import upstream_error
from tests.harness.rawhttp import Answer, read_request, server


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    async with Transport(connect_timeout=2.0) as t:
        yield t


def once(raw: bytes, *, then_abort: bool = False) -> Answer:
    """Answer every request on a connection with ``raw`` (then cut the connection)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(raw)
            await writer.drain()
            if then_abort:
                writer.transport.abort()
                return

    return answer


def recording(raw: bytes, seen: list[bytes]) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(raw)
            await writer.drain()

    return answer


def json_answer(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked(*chunks: bytes, end: bool = True) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + (b"0\r\n\r\n" if end else b"")


@pytest.mark.parametrize(
    ("method", "own_client"),
    [
        pytest.param("POST", True, id="a POST to plain http: the balancer's own client"),
        pytest.param("GET", False, id="anything else: aiohttp"),
        pytest.param("DELETE", False, id="DELETE with a body: aiohttp"),
    ],
)
async def test_who_carries_what(transport: Transport, method: str, own_client: bool) -> None:
    seen: list[bytes] = []
    async with server(recording(json_answer(b"{}"), seen)) as (url, _):
        resp = await transport.send(
            method, url, "/api/x", {"Content-Type": "application/json"}, b"{}"
        )
        assert (resp.status, await resp.read()) == (200, b"{}")
        resp.close()
    head = seen[0].split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(method.lower().encode() + b" /api/x http/1.1")
    assert b"user-agent" not in head  # neither client adds its own
    assert (b"accept:" not in head) is own_client  # aiohttp adds Accept: */*


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_refused_is_a_connect_error_from_either_client(
    transport: Transport, method: str
) -> None:
    async with server(once(b"")) as (url, _):
        pass  # closed: nothing listens there any more
    with pytest.raises(ConnectError):
        await transport.send(method, url, "/", {}, b"")


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_cut_mid_body_is_disconnected_from_either_client(
    transport: Transport, method: str
) -> None:
    async with server(once(chunked(b'{"a":1}\n', end=False), then_abort=True)) as (url, _):
        resp = await transport.send(method, url, "/", {}, b"")
        assert await resp.readany() == b'{"a":1}\n'
        with pytest.raises(Disconnected):
            await resp.readany()
        resp.close()


@pytest.mark.parametrize(
    ("raised", "mapped"),
    [
        pytest.param(aiohttp.ConnectionTimeoutError("connect"), ConnectTimeout, id="connect"),
        pytest.param(aiohttp.SocketTimeoutError("read"), UpstreamTimeout, id="read timeout"),
        pytest.param(TimeoutError(), UpstreamTimeout, id="a timeout"),
        pytest.param(aiohttp.ServerDisconnectedError(), Disconnected, id="server disconnected"),
        pytest.param(aiohttp.ClientPayloadError("cut"), Disconnected, id="payload cut"),
        pytest.param(aiohttp.ClientOSError(104, "reset"), Disconnected, id="reset"),
        pytest.param(ConnectionResetError(104, "reset"), Disconnected, id="os reset"),
        pytest.param(BadStatusLine("garbage"), ProtocolError, id="not http"),
        pytest.param(aiohttp.InvalidURL("http://[::1"), ConnectError, id="invalid url"),
        pytest.param(Disconnected("as is"), Disconnected, id="already one of ours"),
    ],
)  # fmt: skip
def test_aiohttp_and_os_errors_map_into_one_tree(
    raised: BaseException, mapped: type[UpstreamError]
) -> None:
    got = upstream_error(raised)
    assert type(got) is mapped and isinstance(got, UpstreamError)
    assert str(got)  # says what happened


async def test_closed_until_opened_and_open_again_after_close() -> None:
    transport = Transport(connect_timeout=1.0)
    with pytest.raises(RuntimeError, match="not open"):
        await transport.send("GET", "http://127.0.0.1:9", "/", {}, b"")
    async with server(once(json_answer(b"{}"))) as (url, _):
        for _ in range(2):
            async with transport:
                resp = await transport.send("GET", url, "/", {}, b"")
                assert await resp.read() == b"{}"
                resp.close()


# ------------------------------------------------------------------ whole calls
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(json_answer(b'{"models":[]}'), {"models": []}, id="a document"),
        pytest.param(json_answer(b""), None, id="empty"),
        pytest.param(
            json_answer(b'{"error":"boom"}', "500 Internal Server Error"),
            ErrorAnswer(500, "boom"),
            id="an error status: its message",
        ),
        pytest.param(json_answer(b"<html>"), ProtocolError, id="not JSON"),
    ],
)
async def test_get_json(transport: Transport, raw: bytes, expected: object) -> None:
    async with server(once(raw)) as (url, _):
        if isinstance(expected, ErrorAnswer):
            with pytest.raises(ErrorAnswer) as err:
                await get_json(transport, url, "/api/ps", timeout=2)
            assert (err.value.status, err.value.message) == (expected.status, expected.message)
            assert not err.value.in_stream
        elif isinstance(expected, type):
            with pytest.raises(expected):
                await get_json(transport, url, "/api/ps", timeout=2)
        else:
            assert await get_json(transport, url, "/api/ps", timeout=2) == expected


async def test_a_call_past_its_deadline_is_a_timeout(transport: Transport) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with server(silent) as (url, _):
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.2s"):
            await call(transport, url, "POST", "/api/copy", b"{}", timeout=0.2)


async def test_progress_lines_split_anyhow_arrive_whole(transport: Transport) -> None:
    raw = chunked(
        b'{"status":"pulling', b' manifest"}\n{"status":"verifying"}\n{"sta', b'tus":"success"}'
    )
    async with server(once(raw)) as (url, _):
        lines = [
            doc
            async for doc in progress(transport, url, "/api/pull", {"model": "m"}, idle_timeout=2)
        ]
    assert [d["status"] for d in lines] == ["pulling manifest", "verifying", "success"]


@pytest.mark.parametrize(
    ("raw", "error", "in_stream"),
    [
        pytest.param(
            chunked(b'{"status":"pulling manifest"}\n{"error":"file does not exist"}\n'),
            ErrorAnswer, True, id="an error line",
        ),
        pytest.param(
            json_answer(b'{"error":"invalid model name"}', "400 Bad Request"),
            ErrorAnswer, False, id="an error status",
        ),
        pytest.param(chunked(b"not json\n"), ProtocolError, None, id="not JSON"),
        pytest.param(
            chunked(b'{"status":"pulling"}\n', end=False), UpstreamTimeout, None, id="silent"
        ),
    ],
)  # fmt: skip
async def test_progress_failures(
    transport: Transport, raw: bytes, error: type[UpstreamError], in_stream: bool | None
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await reader.read()

    async with server(answer) as (url, _):
        with pytest.raises(error) as err:
            async for _ in progress(transport, url, "/api/pull", {"model": "m"}, idle_timeout=0.3):
                pass
    if in_stream is not None:
        assert isinstance(err.value, ErrorAnswer) and err.value.in_stream is in_stream
