"""The relay: a pod's answer to the client, byte for byte, and how it ended.

Streams are sacred: upstream bytes are written to the client as they arrive, never
parsed or re-encoded on the way.  Per chunk the relay does one read, one write, a byte
count and keeps two references (the final metrics line may straddle the last two
reads).  Silence is watched by :class:`IdleWatchdog`, a timer that fires a few times
per ``idle_timeout`` instead of one re-armed per chunk.

The relay does not end the client's stream: the proxy does, once it knows what comes
next — ``write_eof`` after a complete answer, :func:`end_broken` after a break (the
connection cut, so a broken answer never looks complete).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum

import orjson
from aiohttp import web

from ..core.usage import chunk_separator
from ..upstream import Response, UpstreamError

__all__ = ["AT_HAND", "Ending", "IdleWatchdog", "Relay", "cut", "end_broken"]

#: A body this small that is complete when its headers arrive is relayed without an
#: idle watchdog: it fits the client socket's write buffer (aiohttp's 64 KiB high water).
AT_HAND = 64 * 1024


class Ending(StrEnum):
    """How a relay ended."""

    RUNNING = "running"
    """Not ended (yet): still relaying, or cancelled (the client left and aiohttp said so)."""
    COMPLETE = "complete"
    """Every byte of the answer reached the client's socket."""
    BROKEN = "broken"
    """The pod's answer broke off (``error``: the transport's error)."""
    IDLE = "idle"
    """Nothing came (or could be written) for ``idle_timeout``."""
    CLIENT_GONE = "client_gone"
    """A write found the client's connection gone."""
    PREEMPTED = "preempted"
    """The scheduler took the slot back (:attr:`Relay.stop`): the relay stopped at a frame's
    end, the client holding a well-formed partial answer; the proxy resumes the rest."""


class Relay:
    """One answer relayed from a pod to the client: what went through, and how it ended.

    ``sent`` grows as bytes are written, and ``chunks`` counts the NDJSON lines or SSE events
    among them (what a stream that ends without usage figures generated: core.usage), so
    both are right even when the relay is cancelled midway; ``prev`` and ``last`` are the
    last two chunks, ``tail`` their join (kept on every ending, a cancel included).
    """

    __slots__ = (
        "chunks",
        "content_type",
        "ending",
        "error",
        "kept",
        "last",
        "prev",
        "sent",
        "stop",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.chunks = 0
        self.prev = b""
        self.last = b""
        self.content_type = ""
        self.ending = Ending.RUNNING
        self.error: BaseException | None = None
        #: Set by the scheduler (any time) to take the slot back: :meth:`run_kept` stops at
        #: the end of the next frame the client receives.
        self.stop = False
        #: What the client received, chunk by chunk (:meth:`run_kept`): the partial answer a
        #: resume continues, and the stream a non-streamed answer is assembled from.
        self.kept: list[bytes] = []

    @property
    def tail(self) -> bytes:
        return self.prev + self.last

    async def run(
        self,
        upstream: Response,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        idle_timeout: float,
    ) -> Ending:
        """Relay ``upstream``'s body into the prepared ``resp`` of ``request``."""
        self.content_type = upstream.content_type
        read = upstream.readany
        write = resp.write
        sep = chunk_separator(self.content_type)  # b"" for a plain body: nothing to count
        prev = last = b""
        try:
            # All of it came with the headers and fits the socket's buffer: nothing can go
            # silent, no write can wait, so no watchdog (the common small answer).
            if upstream.at_hand(AT_HAND):
                while chunk := await read():
                    await write(chunk)
                    self.sent += len(chunk)
                    if sep:
                        self.chunks += chunk.count(sep)
                    prev = last
                    last = chunk
            else:
                async with asyncio.timeout(None) as deadline:
                    watchdog = IdleWatchdog(deadline, self, idle_timeout)
                    try:
                        while chunk := await read():
                            await write(chunk)
                            self.sent += len(chunk)
                            if sep:
                                self.chunks += chunk.count(sep)
                            prev = last
                            last = chunk
                    finally:
                        watchdog.stop()
        except (UpstreamError, TimeoutError, OSError) as exc:
            self._failed(exc, request)
        else:
            self.ending = Ending.COMPLETE
        finally:
            self.prev, self.last = prev, last  # a cancel too: what went out is counted
        return self.ending

    async def run_kept(
        self,
        upstream: Response,
        request: web.BaseRequest,
        write: Callable[[bytes], Awaitable[None]],
        idle_timeout: float,
        *,
        end: bytes = b"\n",
        transform: Callable[[bytes], bytes] | None = None,
    ) -> Ending:
        """Relay as :meth:`run` does, keeping every byte the client received in :attr:`kept`
        and stopping (:attr:`Ending.PREEMPTED`) at the first frame's ``end`` after
        :attr:`stop` is set.  ``write`` is the client's stream, or a sink when the answer is
        assembled; ``transform`` rewrites a continuation's bytes for the client (a stitcher).

        Only requests the scheduler may take back come here: the per-chunk work a resume
        needs (keep, check, rewrite) stays off everyone else's path.
        """
        self.content_type = upstream.content_type
        read = upstream.readany
        kept = self.kept
        sep = chunk_separator(self.content_type)
        try:
            async with asyncio.timeout(None) as deadline:
                watchdog = IdleWatchdog(deadline, self, idle_timeout)
                try:
                    while chunk := await read():
                        if transform is not None:
                            chunk = transform(chunk)
                            if not chunk:
                                continue
                        await write(chunk)
                        kept.append(chunk)
                        self.sent += len(chunk)
                        if sep:
                            self.chunks += chunk.count(sep)
                        self.prev, self.last = self.last, chunk
                        if self.stop and chunk.endswith(end):
                            self.ending = Ending.PREEMPTED
                            return self.ending
                finally:
                    watchdog.stop()
        except (UpstreamError, TimeoutError, OSError) as exc:
            self._failed(exc, request)
        else:
            self.ending = Ending.COMPLETE
        return self.ending

    def _failed(self, exc: Exception, request: web.BaseRequest) -> None:
        """How a relay that raised ``exc`` ended: the pod broke it (an upstream error, or a
        write that failed for another reason), it went idle, or the client left."""
        if isinstance(exc, UpstreamError):
            self.ending, self.error = Ending.BROKEN, exc
        elif isinstance(exc, TimeoutError):
            self.ending, self.error = Ending.IDLE, exc
        elif isinstance(exc, ConnectionResetError) and request.transport is None:
            self.ending = Ending.CLIENT_GONE  # a write: the client's side
        else:
            self.ending, self.error = Ending.BROKEN, exc


class IdleWatchdog:
    """Expires ``deadline`` once the relay's byte count has not moved for ``idle`` seconds.

    It looks every ``idle / 4`` seconds, so a silence is cut after between ``idle`` and
    ``1.25 × idle`` — never earlier — at the cost of four timer events per ``idle`` per
    stream instead of one timer re-armed per chunk.
    """

    __slots__ = ("_deadline", "_handle", "_idle", "_loop", "_relay", "_seen", "_since")

    def __init__(self, deadline: asyncio.Timeout, relay: Relay, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self._relay = relay
        self._idle = idle
        self._seen = relay.sent
        self._since = self._loop.time()
        self._handle = self._loop.call_at(self._since + idle / 4, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self._relay.sent != self._seen:
            self._seen = self._relay.sent
            self._since = now
        elif now - self._since >= self._idle:
            self._deadline.reschedule(now)  # raises TimeoutError in the relay
            return
        self._handle = self._loop.call_at(now + self._idle / 4, self._check)

    def stop(self) -> None:
        self._handle.cancel()


async def end_broken(
    request: web.BaseRequest,
    resp: web.StreamResponse,
    content_type: str,
    last: bytes,
    message: str,
) -> None:
    """End a stream that broke after its first byte so that every client sees it broke
    (``last``: the last chunk relayed, to start the error line on a line of its own).

    NDJSON first gets Ollama's own mid-stream failure, a final ``{"error": ...}`` line, for
    the clients that read it (ollama-python raises it).  Then, whatever the body, the
    connection is cut the way a dying pod cuts it: no final empty chunk, no ``[DONE]`` or
    ``message_stop``, no short fixed-length body.  A clean end after an error line reads
    as a complete answer to clients that skip the line (Open WebUI's converter did: the
    cut-off text with a normal finish); a cut reads as a failure to every HTTP client
    (aiohttp: "Response payload is not completed"; httpx: "incomplete chunked read").
    """
    if content_type == "application/x-ndjson":
        prefix = b"" if not last or last.endswith(b"\n") else b"\n"
        try:
            await resp.write(prefix + orjson.dumps({"error": message}) + b"\n")
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one too
            return
    cut(request, resp)


def cut(request: web.BaseRequest, resp: web.StreamResponse) -> None:
    """Close the client's connection once what was written is flushed, before aiohttp
    ends the response: its own end (the last chunk) then finds the connection closing and
    gives up quietly, so the client sees the answer cut short and our log no traceback
    (raising from the handler instead would log one)."""
    resp.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes the buffered bytes (the error line) first
