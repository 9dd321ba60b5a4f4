"""An in-memory upstream for the proxy's parts: pods that are Python functions behind a
:class:`~ollama_balancer.upstream.Sender`, answering with a :class:`MemoryResponse` the
test feeds chunk by chunk, or with an error of the transport's tree.

The seam is the transport's own protocol (the way httpx's ``MockTransport`` is), so
everything above it — claims, attempts, relay, lessons, the client's real connection —
runs as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ollama_balancer.upstream import Response

__all__ = ["MemoryResponse", "MemoryTransport", "Sent"]

_END = b""


class MemoryResponse:
    """A pod's answer: status and headers at once, then the body as the test feeds it.

    ``body`` is fed up front; unless ``open``, the answer ends after it.  Items are
    chunks, or an exception the next read raises (the pod broke off).
    """

    def __init__(
        self,
        status: int = 200,
        body: Iterable[bytes | BaseException] = (),
        *,
        content_type: str = "application/x-ndjson",
        reason: str = "OK",
        content_length: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        open: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.content_length = content_length
        self.chunked = content_length is None
        self.header_items = [("Content-Type", content_type), *headers]
        if content_length is not None:
            self.header_items.append(("Content-Length", str(content_length)))
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        items = list(body)
        for item in items:
            self._queue.put_nowait(item)
        self._whole = not open and all(isinstance(i, bytes) for i in items)
        self._size = sum(len(i) for i in items if isinstance(i, bytes))
        if not open:
            self._queue.put_nowait(_END)
        self.reads = 0
        self.ended = False
        self.closed = False

    # ---- what the test does
    async def feed(self, item: bytes | BaseException) -> None:
        """Send one chunk (or break off with ``item``) and wait until it was read."""
        self._queue.put_nowait(item)
        async with asyncio.timeout(5):  # a relay that stopped reading fails the test
            await self._queue.join()

    def end(self) -> None:
        self._queue.put_nowait(_END)

    # ---- the Response protocol
    def at_hand(self, limit: int) -> bool:
        return self._whole and self._size <= limit

    async def readany(self) -> bytes:
        if self.ended:
            return _END
        item = await self._queue.get()
        self._queue.task_done()
        self.reads += 1
        if isinstance(item, BaseException):
            raise item
        self.ended = not item
        return item

    async def read(self, limit: int = 1 << 20) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)[:limit]

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Sent:
    """One request a pod received."""

    method: str
    base_url: str
    path_qs: str
    headers: Mapping[str, str]
    body: bytes


Pod = Callable[[Sent], Awaitable[Response]]


@dataclass
class MemoryTransport:
    """A :class:`~ollama_balancer.upstream.Sender` whose pods (by base URL) are coroutines:
    each returns its answer or raises an ``UpstreamError``.  An unknown URL fails loudly."""

    pods: dict[str, Pod]
    sent: list[Sent] = field(default_factory=list)

    async def send(
        self, method: str, base_url: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        request = Sent(method, base_url, path_qs, dict(headers), body)
        self.sent.append(request)
        return await self.pods[base_url](request)

    def to(self, base_url: str) -> list[Sent]:
        return [s for s in self.sent if s.base_url == base_url]
