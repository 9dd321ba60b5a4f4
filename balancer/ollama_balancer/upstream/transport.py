"""The one way the balancer talks to pods: send a request, get a :class:`Response`.

A POST to a plain-``http`` pod — every proxied request, a pull, an unload — goes
through the balancer's own HTTP/1.1 client (:mod:`.http11`); anything else (``https``
pods, the polls' GETs, a blob's HEAD, a DELETE) through one aiohttp session.  Either
way the caller sees the same :class:`Response` and the same errors (:mod:`.errors`).

One transport per process: built with the app, opened and closed by the app's cleanup
context (``async with transport``), handed to everything that talks to pods.  Its
connections live only while it is open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol

import aiohttp

from . import aio
from .http11 import Http11Pool

__all__ = ["UPSTREAM_KEEPALIVE", "Response", "Sender", "Transport"]

#: Seconds an idle connection to a pod is kept for the next request.  Ollama (Go's
#: net/http, no IdleTimeout) keeps them forever; aiohttp servers (the emulator) close
#: theirs after 75 s: closing first means never sending on a connection being closed.
UPSTREAM_KEEPALIVE = 60.0


class Response(Protocol):
    """A pod's answer as it arrives: status and headers first, then the body chunk by chunk.

    Reading raises :class:`~.errors.UpstreamError` when the answer breaks off;
    :meth:`close` gives a complete answer's connection back and aborts an incomplete one
    (which makes Ollama stop generating).
    """

    status: int
    reason: str
    header_items: list[tuple[str, str]]
    content_length: int | None
    content_type: str
    chunked: bool

    def at_hand(self, limit: int) -> bool:
        """The whole body is already here and is at most ``limit`` bytes."""
        ...

    async def readany(self) -> bytes:
        """The next chunk as it arrived (all that is buffered), ``b""`` at the end."""
        ...

    async def read(self, limit: int = ...) -> bytes:
        """The rest of the body, at most ``limit`` bytes of it."""
        ...

    def close(self) -> None: ...


class Sender(Protocol):
    """What talking to a pod needs of the transport (the proxy, the fan-outs, the pulls and
    the poller take this; tests hand in an in-memory one)."""

    async def send(
        self, method: str, base_url: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> Response: ...


class Transport:
    """Requests to pods over keep-alive connections, one error tree, open while in use
    (a :class:`Sender`)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        keepalive: float = UPSTREAM_KEEPALIVE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._clock = clock
        # No overall limit: a stream may run for minutes; callers bound what they wait for.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._pool: Http11Pool | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def open(self) -> None:
        """Start the connection pools (inside a running event loop)."""
        if self._session is None:
            self._session = aio.new_session(self.keepalive)
            self._pool = Http11Pool(
                connect_timeout=self.connect_timeout, keepalive=self.keepalive, clock=self._clock
            )

    async def close(self) -> None:
        """Close every connection; the transport can be opened again."""
        pool, self._pool = self._pool, None
        session, self._session = self._session, None
        if pool is not None:
            pool.close()
        if session is not None:
            await session.close()

    async def send(
        self, method: str, base_url: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send ``method base_url+path_qs`` with ``body``; returns once the status and
        headers are in (the caller bounds that wait).  ``headers`` go as given: no
        ``Host`` (the pod's is set), no ``Content-Length`` (the body's is)."""
        pool = self._pool
        if pool is not None and method == "POST" and base_url.startswith("http://"):
            return await pool.post(base_url, path_qs, headers, body)
        session = self._session
        if session is None:
            raise RuntimeError("the transport to the pods is not open")
        return await aio.send(session, self._timeout, method, base_url + path_qs, headers, body)
