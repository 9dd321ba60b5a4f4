"""The proxy's own HTTP/1.1 client to plain-http pods: one request, one response, kept alive.

The hot path — a proxied POST and every chunk of its answer — went through aiohttp's
client: a ``ClientRequest``, a ``ClientResponse``, a ``StreamReader`` with its waiters
and timers, per request and per chunk.  Here a pooled connection is an
:class:`asyncio.Protocol` whose llhttp parser (httptools) hands body chunks straight to
the relay: per chunk one parser callback, one list append and at most one wake-up.

What it does not do, because the transport never asks it to: TLS, redirects, cookies,
compression, proxies, 100-continue, methods other than POST.  The transport
(:mod:`.transport`) sends everything else through aiohttp.

It raises the transport's own errors (:mod:`.errors`): :class:`ConnectError` and
:class:`ConnectTimeout` before a connection, :class:`Disconnected` and
:class:`ProtocolError` after.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from .errors import ConnectError, ConnectTimeout, Disconnected, ProtocolError, describe

__all__ = ["HIGH_WATER", "Http11Pool", "Http11Response"]

#: Bytes buffered from a pod before reading from it pauses (the client reads slower).
HIGH_WATER = 256 * 1024


class Http11Response:
    """One response, read as it arrives: status and headers first, then :meth:`readany`."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_waiter",
        "chunked",
        "content_length",
        "content_type",
        "header_items",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = ""
        self.header_items: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.content_type = "application/octet-stream"
        self.chunked = False

    def at_hand(self, limit: int) -> bool:
        return self._done and self._error is None and self._conn.buffered <= limit

    def header(self, name: str, default: str = "") -> str:
        lname = name.lower()
        for key, value in self.header_items:
            if key.lower() == lname:
                return value
        return default

    async def readany(self) -> bytes:
        """The next chunk as it arrived (all that is buffered), b"" at the end."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(_drain(chunks))
        conn = self._conn
        conn.buffered -= len(chunk)
        if conn.paused and conn.buffered < HIGH_WATER // 2:
            conn.resume()
        return chunk

    async def read(self, limit: int = 1 << 20) -> bytes:
        """The rest of the body, at most ``limit`` bytes of it."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    def close(self) -> None:
        """Give the connection back when the response is complete, else abort it (which
        makes Ollama stop generating)."""
        conn = self._conn
        if conn.response is self:
            conn.finish(reuse=self._done and self._error is None and not self._chunks)

    # ---- called by the connection
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
        self._wake()


def _drain(chunks: deque[bytes]) -> Iterable[bytes]:
    while chunks:
        yield chunks.popleft()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one pod, serving one response at a time."""

    def __init__(self, pool: Http11Pool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Http11Response | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.buffered = 0
        self.paused = False
        self.closed = False
        self.reusable = False  # what the parser said of the last complete response
        self.reused = False  # this exchange runs on a kept-alive connection
        self.answered = False  # some byte of this exchange's response has arrived
        self.idle_since = 0.0
        self._header_name = b""

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are the same API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection is not safe to reuse
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(ProtocolError(f"invalid HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        resp = self.response
        if (
            exc is None
            and resp is not None
            and resp.status >= 200
            and resp.content_length is None
            and not resp.chunked
        ):
            resp._done = True  # a body without a length ends where the connection does
            resp._wake()
            return
        self._failed(Disconnected(str(exc) if exc else "server disconnected"))

    # ---- httptools callbacks
    def on_status(self, status: bytes) -> None:
        assert self.response is not None
        self.response.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.header_items.append(
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        resp.status = self.parser.get_status_code()
        if 100 <= resp.status < 200:  # an interim answer: the real one follows
            resp.header_items = []
            return
        for name, value in resp.header_items:
            lname = name.lower()
            if lname == "content-length" and value.strip().isdigit():
                resp.content_length = int(value)
            elif lname == "content-type":
                resp.content_type = value.split(";", 1)[0].strip().lower()
            elif lname == "transfer-encoding":
                resp.chunked = "chunked" in value.lower()
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self.response
        assert resp is not None
        if 100 <= resp.status < 200:
            return
        # Asked here: once feed_data returns, the parser has reset its keep-alive flag.
        self.reusable = self.parser.should_keep_alive()
        resp._done = True
        resp._wake()

    # ---- used by the pool and the response
    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _failed(self, exc: BaseException) -> None:
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_exception(exc)
        if self.response is not None:
            self.response._fail(exc)

    def finish(self, reuse: bool) -> None:
        self.response = None
        self.headers_ready = None
        if reuse and not self.closed and self.reusable:
            self.reusable = False
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class Http11Pool:
    """Keep-alive connections per pod (host, port), no limit of their own (routing bounds
    what each pod gets)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        keepalive: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.clock = clock
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._hosts: dict[str, tuple[str, int, bytes]] = {}

    def _target(self, url: str) -> tuple[str, int, bytes]:
        """(host, port, the Host header line) of a backend base URL, parsed once."""
        known = self._hosts.get(url)
        if known is None:
            parts = urlsplit(url)
            host = parts.hostname or "localhost"
            port = parts.port or 80
            netloc = host if port == 80 else f"{host}:{port}"
            if ":" in host and not netloc.startswith("["):  # an IPv6 literal
                netloc = f"[{host}]" if port == 80 else f"[{host}]:{port}"
            known = (host, port, b"Host: " + netloc.encode("idna") + b"\r\n")
            self._hosts[url] = known
        return known

    async def post(
        self, base_url: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> Http11Response:
        """Send ``body`` to ``base_url + path_qs``; returns once the status and headers
        are in (the caller bounds that wait)."""
        host, port, host_line = self._target(base_url)
        data = _request_head(path_qs, host_line, headers, len(body)) + body
        conn = await self._acquire((host, port))
        try:
            return await self._exchange(conn, data)
        except Disconnected:
            if not conn.reused or conn.answered:
                raise
        # A kept-alive connection that the pod (or something on the way) had closed while
        # it sat idle: not a byte of an answer came, so the request was not served.  Once
        # more on a new connection, as Go's and urllib3's clients do.
        return await self._exchange(await self._connect((host, port)), data)

    async def _exchange(self, conn: _Connection, data: bytes) -> Http11Response:
        resp = Http11Response(conn)
        conn.response = resp
        conn.answered = False
        conn.headers_ready = conn.loop.create_future()
        assert conn.transport is not None
        conn.transport.write(data)
        try:
            await conn.headers_ready
        except BaseException:
            conn.finish(reuse=False)
            raise
        return resp

    async def _acquire(self, key: tuple[str, int]) -> _Connection:
        idle = self._idle.get(key)
        now = self.clock()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            fresh = now - conn.idle_since < self.keepalive
            if fresh and not conn.closed and transport is not None and not transport.is_closing():
                conn.reused = True
                return conn
            conn.abort()
        return await self._connect(key)

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, proto = await loop.create_connection(
                    lambda: _Connection(self, key), *key
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {key[0]}:{key[1]} within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, no such host
            raise ConnectError(f"{key[0]}:{key[1]}: {describe(exc)}") from exc
        proto.transport = transport  # uvloop calls connection_made only later
        return proto

    def release(self, conn: _Connection) -> None:
        conn.idle_since = self.clock()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()


def _request_head(path_qs: str, host_line: bytes, headers: Mapping[str, str], length: int) -> bytes:
    lines = [b"POST ", path_qs.encode("utf-8", "surrogateescape"), b" HTTP/1.1\r\n", host_line]
    for name, value in headers.items():
        data = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        if data.count(b"\n") != 1 or b"\r" in data[:-2]:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(data)
    lines.append(b"Content-Length: %d\r\n\r\n" % length)
    return b"".join(lines)
