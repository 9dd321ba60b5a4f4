"""Whole calls to a pod over the transport: a small answer read at once, a JSON document,
an NDJSON progress stream (pull, create) — for the poller, the fan-outs and auto-pull.

Failures are the transport's tree (:mod:`.errors`): a deadline passed is
:class:`UpstreamTimeout`, an error status or an in-stream error line :class:`ErrorAnswer`,
a document that is not JSON :class:`ProtocolError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ErrorAnswer, ProtocolError, UpstreamTimeout
from .transport import Sender

__all__ = ["JSON", "Reply", "call", "error_message", "get_json", "progress"]

#: The headers of a call whose body is JSON.
JSON: Mapping[str, str] = {"Content-Type": "application/json"}

#: The longest answer (or progress line) a call reads: Ollama's are a few KiB.
LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    """A pod's whole answer to one call."""

    status: int
    reason: str
    body: bytes

    @property
    def message(self) -> str:
        """The error message the body carries (``""`` when it carries none)."""
        return error_message(self.body)


def error_message(body: bytes) -> str:
    """The message of a pod's error body: Ollama's ``{"error": "..."}``, the OpenAI shape's
    ``error.message``, else the text itself (Ollama's plain 404/405 for unknown routes)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return ""


async def call(
    transport: Sender,
    base_url: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timeout: float,
    headers: Mapping[str, str] = JSON,
) -> Reply:
    """Send one request and read its whole answer within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            resp = await transport.send(method, base_url, path, headers, body)
            try:
                data = await resp.read(LIMIT)
            finally:
                resp.close()
    except TimeoutError:
        raise UpstreamTimeout(f"{method} {path}: no answer within {timeout:g}s") from None
    return Reply(resp.status, resp.reason, data)


async def get_json(transport: Sender, base_url: str, path: str, *, timeout: float) -> Any:
    """``GET path``'s JSON document (``None`` for an empty body)."""
    reply = await call(transport, base_url, "GET", path, timeout=timeout)
    if reply.status >= 400:
        raise ErrorAnswer(reply.status, reply.message or reply.reason)
    if not reply.body.strip():
        return None
    try:
        return orjson.loads(reply.body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON from {base_url}{path}: {exc}") from None


async def progress(
    transport: Sender,
    base_url: str,
    path: str,
    doc: Mapping[str, Any],
    *,
    idle_timeout: float,
) -> AsyncIterator[dict[str, Any]]:
    """Stream a progress endpoint (``/api/pull``, ``/api/create``) to its end, one object per
    line as it comes; silence longer than ``idle_timeout`` is an :class:`UpstreamTimeout`."""
    # The standard encoder: a client's document may hold what orjson refuses (huge integers).
    body = json.dumps({**doc, "stream": True}).encode()
    try:
        async with asyncio.timeout(idle_timeout):
            resp = await transport.send("POST", base_url, path, JSON, body)
    except TimeoutError:
        raise UpstreamTimeout(f"POST {path}: no answer within {idle_timeout:g}s") from None
    try:
        if resp.status >= 400:
            raise ErrorAnswer(resp.status, error_message(await resp.read(LIMIT)) or resp.reason)
        pending = b""
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await resp.readany()
            except TimeoutError:
                raise UpstreamTimeout(f"POST {path}: silent for {idle_timeout:g}s") from None
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop() if chunk else b""  # at the end, a last line without "\n"
            if len(pending) > LIMIT:
                raise ProtocolError(f"a progress line from {base_url}{path} over {LIMIT} bytes")
            for line in lines:
                if line.strip():
                    yield _progress_line(line, base_url, path)
            if not chunk:
                return
    finally:
        resp.close()


def _progress_line(line: bytes, base_url: str, path: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid progress line from {base_url}{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"invalid progress line from {base_url}{path}: not an object")
    if "error" in doc:
        raise ErrorAnswer(200, str(doc["error"]))
    return doc
