"""HTTP plumbing shared by the handlers: error type, JSON bodies, lazy streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .gojson import GoJSONError, decode_first, go_kind
from .wire import go_json

__all__ = [
    "BODY_KEY",
    "DROP_KEY",
    "JSON",
    "ApiError",
    "ChunkStream",
    "StreamCut",
    "abort",
    "expect",
    "json_response",
    "read_body",
    "read_json",
]

#: gin's ``c.JSON`` content type.
JSON = "application/json; charset=utf-8"

DROP_KEY = web.RequestKey("drop_after", int)
BODY_KEY = web.RequestKey("body", bytes)
"""The body after Ollama's decoding step (zstd on some ``/v1`` paths), set by the app."""


class ApiError(Exception):
    """An error answered before the first byte; the middleware picks the body shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=go_json(obj), headers={"Content-Type": JSON})


async def read_body(request: web.Request) -> bytes:
    """The request body as the handler sees it (decoded where Ollama decodes it)."""
    decoded = request.get(BODY_KEY)
    return decoded if decoded is not None else await request.read()


async def read_json(request: web.Request, struct: str) -> dict[str, Any]:
    """The request body as an object, with gin/Go's 400 messages for bad input."""
    raw = await read_body(request)
    if not raw:
        raise ApiError(400, "missing request body")
    try:
        doc = decode_first(raw)
    except GoJSONError as exc:
        if exc.message == "EOF":
            raise ApiError(400, "missing request body") from None
        raise ApiError(400, exc.message) from None
    if doc is None:
        return {}  # Go: null into a struct is a no-op
    if not isinstance(doc, dict):
        raise ApiError(400, f"json: cannot unmarshal {go_kind(doc)} into Go value of type {struct}")
    return doc


def expect(
    doc: dict[str, Any], key: str, kind: type | tuple[type, ...], struct: str, go: str
) -> None:
    """Go's unmarshal error when ``doc[key]`` has the wrong JSON type (null is fine)."""
    value = doc.get(key)
    if value is None:
        return
    wrong = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if wrong or not isinstance(value, kind):
        raise ApiError(
            400,
            f"json: cannot unmarshal {go_kind(value)} into Go struct field "
            f"{struct}.{key} of type {go}",
        )


class StreamCut(Exception):
    """The ``drop_after`` fault ended a stream that Ollama ends silently on failure."""


class ChunkStream:
    """A streamed 200 whose headers go out with the first chunk, as in Ollama.

    Honours the ``drop_after`` fault: after that many chunks the connection is
    aborted and :class:`ConnectionResetError` raised.  With ``silent_cut`` (the
    Anthropic route, where a failing runner just ends the stream) the stream is
    instead ended cleanly after a first chunk, and :class:`StreamCut` raised so
    the handler stops generating and calls :meth:`finish`.
    """

    def __init__(
        self,
        request: web.Request,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        *,
        silent_cut: bool = False,
    ) -> None:
        self.request = request
        self.headers = {"Content-Type": content_type, **(headers or {})}
        self.response: web.StreamResponse | None = None
        self.chunks = 0
        self.drop_after = request.get(DROP_KEY)
        self.silent_cut = silent_cut

    async def write(self, data: bytes) -> None:
        if self.drop_after is not None and self.chunks >= self.drop_after:
            if self.silent_cut and self.chunks > 0:
                raise StreamCut
            abort(self.request)
        if self.response is None:
            self.response = web.StreamResponse(status=200, headers=self.headers)
            await self.response.prepare(self.request)
        await self.response.write(data)
        self.chunks += 1

    async def finish(self) -> web.StreamResponse:
        if self.response is None:  # nothing was written: still a valid empty 200
            self.response = web.StreamResponse(status=200, headers=self.headers)
            await self.response.prepare(self.request)
        await self.response.write_eof()
        return self.response


def abort(request: web.Request) -> None:
    """Drop the connection without a response (fault injection)."""
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("connection dropped by emulator fault")
