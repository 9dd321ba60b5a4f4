"""Reading what a client asked for: body, model, pin, affinity key (pure).

The body is parsed once.  It is re-encoded only when the balancer must change
it (a ``model@backend`` pin or a gateway prefix such as ``ollama/llama3``);
otherwise the client's bytes are forwarded untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ollama_wire.durations import KeepAliveError, parse_keep_alive
from ollama_wire.names import InvalidModelName, parse, strip_gateway_prefix

__all__ = [
    "Intent",
    "InvalidRequest",
    "ParsedRequest",
    "affinity_key",
    "parse_request",
    "with_model",
    "with_num_ctx",
]


class Intent(StrEnum):
    """What a request asks of the model (ollama-api.md §3)."""

    INFER = "infer"
    LOAD = "load"  # an empty prompt/messages/input: load (and maybe pin) without generating
    UNLOAD = "unload"  # the same with keep_alive 0: unload once idle


#: Native paths whose empty request means load/unload; their "nothing to do" field.
_LOAD_FIELDS = {"/api/generate": "prompt", "/api/chat": "messages", "/api/embed": "input"}


class InvalidRequest(Exception):
    """The body cannot be read as a request for a model (the pipeline answers 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    doc: dict[str, Any]
    body: bytes  # what to forward
    model: str  # as it will be sent upstream
    key: str  # canonical
    alt_key: str | None  # canonical of the name without a gateway prefix, if any
    alt_model: str | None
    pin: str | None
    stream: bool
    intent: Intent = Intent.INFER
    num_ctx: int | None = None  # options.num_ctx: a runner option (a mismatch reloads)


def parse_request(
    raw: bytes, path: str, pin_header: str | None, *, max_depth: int = 64
) -> ParsedRequest:
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid JSON: body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except RecursionError:
        raise InvalidRequest("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("invalid JSON: expected an object")
    if _depth(doc, max_depth) > max_depth:
        raise InvalidRequest(f"invalid JSON: nested deeper than {max_depth} levels")
    model_field = "model" if doc.get("model") or "name" not in doc else "name"
    model = doc.get(model_field)
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required")
    pin = pin_header.strip() if pin_header and pin_header.strip() else None
    rewritten = False
    if "@" in model:
        base, _, at = model.rpartition("@")
        if base and at:
            model, pin, rewritten = base, pin or at, True
    alt_model = strip_gateway_prefix(model)
    alt_key = None
    if alt_model is not None:
        try:
            alt_key = parse(alt_model).canonical
        except InvalidModelName:
            alt_model = None
    try:
        key = parse(model).canonical
    except InvalidModelName:
        if alt_key is None or alt_model is None:
            raise InvalidRequest("invalid model name") from None  # Ollama's exact answer
        model, key, alt_key, alt_model, rewritten = alt_model, alt_key, None, None, True
    if rewritten:
        doc[model_field] = model
        raw = json.dumps(doc, separators=(",", ":")).encode()
    stream_default = not path.startswith("/v1/")
    stream = doc.get("stream", stream_default)
    return ParsedRequest(
        doc=doc,
        body=raw,
        model=model,
        key=key,
        alt_key=alt_key,
        alt_model=alt_model,
        pin=pin,
        stream=bool(stream) if stream is not None else stream_default,
        intent=_intent(doc, path),
        num_ctx=_num_ctx(doc),
    )


def _intent(doc: Mapping[str, Any], path: str) -> Intent:
    empty_field = _LOAD_FIELDS.get(path)
    if empty_field is None or doc.get(empty_field):
        return Intent.INFER
    try:
        keep_alive = parse_keep_alive(doc.get("keep_alive"))
    except KeepAliveError:
        return Intent.INFER  # Ollama answers the 400 itself
    return Intent.UNLOAD if keep_alive == 0 else Intent.LOAD


def _num_ctx(doc: Mapping[str, Any]) -> int | None:
    options = doc.get("options")
    value = options.get("num_ctx") if isinstance(options, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None  # absent, or Ollama's "automatic"
    return int(value)


def with_num_ctx(req: ParsedRequest, num_ctx: int) -> ParsedRequest:
    """The request with ``options.num_ctx`` set (a model's pinned runner context)."""
    doc = dict(req.doc)
    options = doc.get("options")
    doc["options"] = {**(options if isinstance(options, dict) else {}), "num_ctx": num_ctx}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return replace(req, doc=doc, body=body, num_ctx=num_ctx)


def with_model(req: ParsedRequest, model: str, key: str) -> ParsedRequest:
    """The request with its model replaced (gateway prefix dropped)."""
    doc = dict(req.doc)
    field = "model" if "model" in doc else "name"
    doc[field] = model
    body = json.dumps(doc, separators=(",", ":")).encode()
    return replace(req, doc=doc, body=body, model=model, key=key, alt_key=None, alt_model=None)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def affinity_key(doc: Mapping[str, Any], key: str, session: str | None) -> str | None:
    """A conversation's identity: the client's session id, else a hash of its opening.

    Requests that share a conversation prefix (system prompt + first user turn)
    reuse Ollama's prompt cache on the pod that served the earlier turns.
    """
    if session:
        return "s:" + session[:256]
    messages = doc.get("messages")
    opening: list[Any] = []
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                opening = messages[: i + 1]
                break
    elif isinstance(doc.get("system"), str) and doc.get("system"):
        opening = [doc.get("system")]
    if not opening:
        return None
    digest = hashlib.blake2b(
        json.dumps([key, opening], sort_keys=True, default=str).encode(), digest_size=16
    )
    return "p:" + digest.hexdigest()
