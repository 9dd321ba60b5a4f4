"""aiohttp behind the transport: the pods the HTTP/1.1 client does not serve (``https``,
methods other than POST), its errors mapped into the transport's tree as they happen."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from ollama_wire.loop import loop_name

from .errors import upstream_error

__all__ = ["AiohttpResponse", "new_session", "send"]

#: What aiohttp raises talking to a server (its parser's errors are no ClientError).
_FAILURES = (aiohttp.ClientError, HttpProcessingError, OSError, TimeoutError)


def new_session(keepalive: float) -> aiohttp.ClientSession:
    """The process's one aiohttp session to the pods: keep-alive per pod, no limit of its own.

    Routing already bounds what each pod gets (its slots, then Ollama's own queue); a
    connector limit would only add a second, invisible queue in front of Ollama's.
    Closed-TLS-transport cleanup (a timer every 2 s) is for asyncio's own loop on the
    Pythons that leak them; uvloop has its own TLS.  Answers are relayed as sent
    (no decompression), and no ``User-Agent`` of aiohttp's is added to the client's.
    """
    leaks = bool(getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", True))
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        keepalive_timeout=keepalive,
        ttl_dns_cache=10,  # DNS discovery re-resolves on its own schedule anyway
        enable_cleanup_closed=leaks and loop_name(asyncio.get_running_loop()) == "asyncio",
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


async def send(
    session: aiohttp.ClientSession,
    timeout: aiohttp.ClientTimeout,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
) -> AiohttpResponse:
    """``method url`` with ``body``; returns once the status and headers are in."""
    try:
        resp = await session.request(
            method, url, data=body or None, headers=headers, timeout=timeout, allow_redirects=False
        )
    except _FAILURES as exc:
        raise upstream_error(exc) from exc
    return AiohttpResponse(resp)


class AiohttpResponse:
    """An aiohttp response as the transport's :class:`~.transport.Response`."""

    __slots__ = (
        "_content",
        "_resp",
        "chunked",
        "content_length",
        "content_type",
        "header_items",
        "reason",
        "status",
    )

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._content = resp.content
        self.status = resp.status
        self.reason = resp.reason or ""
        self.header_items = list(resp.headers.items())
        self.content_length = resp.content_length
        self.content_type = resp.content_type
        self.chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()

    def at_hand(self, limit: int) -> bool:
        return False  # aiohttp's buffer is not worth asking: these pods take the long way

    async def readany(self) -> bytes:
        try:
            return await self._content.readany()
        except _FAILURES as exc:
            raise upstream_error(exc) from exc

    async def read(self, limit: int = 1 << 20) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < limit and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    def close(self) -> None:
        self._resp.close()
