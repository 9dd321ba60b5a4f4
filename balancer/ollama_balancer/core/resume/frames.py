"""Frames of a relayed stream, and JSON written the way Ollama's Go encoder writes it (pure).

A frame is one NDJSON line (``\\n``-terminated) or one SSE event (``\\n\\n``-terminated);
Ollama writes and flushes one frame per token, but a read from the socket may hold several
or end inside one, so every reader here splits on the terminator and keeps the rest.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .dialects import Dialect

__all__ = ["go_json", "loads", "split", "sse_event", "terminator"]


def terminator(dialect: Dialect) -> bytes:
    return b"\n\n" if dialect.sse else b"\n"


def split(data: bytes, end: bytes) -> tuple[list[bytes], bytes]:
    """The complete frames of ``data`` (terminators removed) and the incomplete rest."""
    cut = data.rfind(end)
    if cut < 0:
        return [], data
    frames = data[:cut].split(end)
    return [f for f in frames if f], data[cut + len(end) :]


def sse_event(frame: bytes) -> tuple[bytes, bytes]:
    """``(event name, data)`` of one SSE event; the name is ``b""`` when the event has none.

    Ollama writes ``event: <name>\\ndata: <json>`` (Anthropic) or ``data: <json>`` (OpenAI);
    several ``data:`` lines are joined with ``\\n`` as the SSE standard says.
    """
    if frame.startswith(b"data: ") and b"\n" not in frame:
        return b"", frame[6:]  # the common case: one data line, no event name
    name = b""
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        field, _, value = line.rstrip(b"\r").partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            name = value
        elif field == b"data":
            data.append(value)
    return name, b"\n".join(data)


def loads(raw: bytes) -> Any:
    """A frame's JSON, or None when it is not JSON (a frame the readers then skip)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)  # a lone surrogate escape, which Go and Python accept
        except (ValueError, RecursionError):
            return None


# Go's encoding/json escapes these inside strings (nowhere else can they occur in JSON).
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_json(doc: Any) -> bytes:
    """Compact JSON, keys in the order given, escaped as Ollama's encoder escapes it."""
    try:
        raw = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate that came in through ``loads``
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
    for plain, escaped in _GO_ESCAPES:
        if plain in raw:
            raw = raw.replace(plain, escaped)
    return raw
