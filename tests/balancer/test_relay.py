"""The relay on its own: an in-memory pod's answer to a real client over loopback, and how
each relay ended — complete, broken mid-stream (NDJSON, SSE, JSON), silent, client gone.

A broken answer reaches the client cut short, never cleanly ended: aiohttp's client raises
``ClientPayloadError`` ("Response payload is not completed") after what was relayed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from ollama_balancer.proxying.relay import Ending, Relay, end_broken
from ollama_balancer.upstream import Disconnected, ProtocolError
from tests.harness.cut import read_cut
from tests.harness.eventually import eventually
from tests.harness.memory_pods import MemoryResponse

BROKEN = "pod-a: stream broken"


@dataclass
class Served:
    """What the server side saw: the relay (once it ran) and its request."""

    relay: Relay = field(default_factory=Relay)
    request: web.BaseRequest | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def relaying(
    upstream: MemoryResponse, idle: float = 5.0
) -> AsyncIterator[tuple[str, Served]]:
    """A loopback server relaying ``upstream`` to whoever posts to it, ending the stream as
    the proxy does; yields (url, what it saw)."""
    served = Served()

    async def handler(request: web.Request) -> web.StreamResponse:
        served.request = request
        resp = web.StreamResponse(status=upstream.status)
        resp.headers["Content-Type"] = upstream.content_type
        if upstream.content_length is not None:
            resp.content_length = upstream.content_length
        await resp.prepare(request)
        try:
            ending = await served.relay.run(upstream, request, resp, idle)
            if ending is Ending.COMPLETE:
                await resp.write_eof()
            elif ending is not Ending.CLIENT_GONE:
                relay = served.relay
                await end_broken(request, resp, relay.content_type, relay.last, BROKEN)
        finally:
            upstream.close()
            served.done.set()
        return resp

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/", served
    finally:
        await runner.cleanup()


LINES = [b'{"response":"a","done":false}\n', b'{"response":"b","done":false}\n']
FINAL = b'{"done":true,"eval_count":2,"total_duration":5}\n'


@pytest.mark.parametrize(
    "open_",
    [
        pytest.param(False, id="complete with its headers: no watchdog"),
        pytest.param(True, id="arriving chunk by chunk: watched"),
    ],
)
async def test_a_complete_answer_arrives_byte_for_byte(open_: bool) -> None:
    upstream = MemoryResponse(body=[] if open_ else [*LINES, FINAL], open=open_)
    async with (
        relaying(upstream) as (url, served),
        aiohttp.ClientSession() as http,
        http.post(url) as resp,
    ):
        if open_:
            for chunk in (*LINES, FINAL):
                await upstream.feed(chunk)
            upstream.end()
        got = await resp.read()
    relay = served.relay
    assert got == b"".join([*LINES, FINAL])
    assert relay.ending is Ending.COMPLETE and relay.error is None
    assert relay.sent == len(got)
    assert relay.tail == LINES[-1] + FINAL  # the final line may straddle the last two reads
    assert relay.content_type == "application/x-ndjson"
    assert upstream.reads == len(LINES) + 2  # one read per chunk, and the end


@pytest.mark.parametrize(
    ("first", "prefix"),
    [
        pytest.param(LINES[0], b"", id="after a whole line"),
        pytest.param(b'{"response":"a"', b"\n", id="mid-line: the error starts a line"),
    ],
)
async def test_ndjson_broken_mid_stream_ends_with_ollamas_error_line(
    first: bytes, prefix: bytes
) -> None:
    upstream = MemoryResponse(body=[first, Disconnected("reset by peer")])
    async with (
        relaying(upstream) as (url, served),
        aiohttp.ClientSession() as http,
        http.post(url) as resp,
    ):
        assert resp.status == 200
        got = await read_cut(resp)
    end = {"error": BROKEN}
    assert got == first + prefix + json.dumps(end, separators=(",", ":")).encode() + b"\n"
    relay = served.relay
    assert relay.ending is Ending.BROKEN and isinstance(relay.error, Disconnected)
    assert (relay.sent, relay.last) == (len(first), first)


async def test_sse_broken_mid_stream_is_cut_without_done() -> None:
    event = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    upstream = MemoryResponse(
        body=[event, ProtocolError("invalid chunk size")], content_type="text/event-stream"
    )
    async with (
        relaying(upstream) as (url, served),
        aiohttp.ClientSession() as http,
        http.post(url) as resp,
    ):
        got = await read_cut(resp)  # no [DONE], and no clean end either
    assert got == event
    assert served.relay.ending is Ending.BROKEN
    assert isinstance(served.relay.error, ProtocolError)


async def test_json_broken_mid_body_aborts_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    part = b'{"model":"m","message":'
    upstream = MemoryResponse(
        body=[part, Disconnected("closed")], content_type="application/json", content_length=80
    )
    async with (
        relaying(upstream) as (url, served),
        aiohttp.ClientSession() as http,
        http.post(url) as resp,
    ):
        assert resp.content_length == 80
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # truncated, never silently short
        await asyncio.wait_for(served.done.wait(), 5)
    assert served.relay.ending is Ending.BROKEN and served.relay.sent == len(part)
    # Cut, not raised: aiohttp logs a traceback for a handler that raises after its head.
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_a_silent_pod_is_cut_after_idle_timeout() -> None:
    upstream = MemoryResponse(open=True)
    idle = 0.2
    async with (
        relaying(upstream, idle=idle) as (url, served),
        aiohttp.ClientSession() as http,
        http.post(url) as resp,
    ):
        await upstream.feed(LINES[0])
        t0 = time.monotonic()
        got = await read_cut(resp)
        silent = time.monotonic() - t0
    relay = served.relay
    assert relay.ending is Ending.IDLE and isinstance(relay.error, TimeoutError)
    assert idle <= silent < 5 * idle  # cut between 1× and 1.25× idle (plus scheduling)
    assert got.startswith(LINES[0]) and got.endswith(b'{"error":"' + BROKEN.encode() + b'"}\n')


async def test_a_client_that_left_is_seen_on_the_next_write() -> None:
    upstream = MemoryResponse(open=True)
    async with relaying(upstream) as (url, served), aiohttp.ClientSession() as http:
        resp = await http.post(url)
        await upstream.feed(LINES[0])
        assert await resp.content.readline() == LINES[0]
        resp.close()  # the client goes away mid-stream
        await eventually(lambda: served.request is not None and served.request.transport is None)
        await upstream.feed(LINES[1])  # the write of this one finds the connection gone
        await asyncio.wait_for(served.done.wait(), 5)
    relay = served.relay
    assert relay.ending is Ending.CLIENT_GONE and relay.error is None
    assert relay.sent == len(LINES[0])
