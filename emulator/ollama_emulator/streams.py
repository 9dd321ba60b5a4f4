"""HTTP plumbing shared by the handlers: error type, JSON bodies, lazy streams."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .wire import go_json

__all__ = [
    "DROP_KEY",
    "JSON",
    "ApiError",
    "ChunkStream",
    "abort",
    "expect",
    "json_response",
    "read_json",
]

#: gin's ``c.JSON`` content type.
JSON = "application/json; charset=utf-8"

DROP_KEY = web.RequestKey("drop_after", int)


class ApiError(Exception):
    """An error answered before the first byte; the middleware picks the body shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=go_json(obj), headers={"Content-Type": JSON})


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "value"


async def read_json(request: web.Request, struct: str) -> dict[str, Any]:
    """The request body as an object, with gin/Go's 400 messages for bad input."""
    raw = await request.read()
    if not raw:
        raise ApiError(400, "missing request body")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        pos = getattr(exc, "pos", len(raw))
        text = raw.decode("utf-8", "replace")
        if pos >= len(text.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(
            400, f"invalid character '{text[pos]}' looking for beginning of value"
        ) from None
    if not isinstance(doc, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {_go_type(doc)} into Go value of type {struct}"
        )
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
            f"json: cannot unmarshal {_go_type(value)} into Go struct field "
            f"{struct}.{key} of type {go}",
        )


class ChunkStream:
    """A streamed 200 whose headers go out with the first chunk, as in Ollama.

    Honours the ``drop_after`` fault: after that many chunks the connection is
    aborted and :class:`ConnectionResetError` raised.
    """

    def __init__(self, request: web.Request, content_type: str, **headers: str) -> None:
        self.request = request
        self.headers = {"Content-Type": content_type, **headers}
        self.response: web.StreamResponse | None = None
        self.chunks = 0
        self.drop_after = request.get(DROP_KEY)

    async def write(self, data: bytes) -> None:
        if self.drop_after is not None and self.chunks >= self.drop_after:
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
