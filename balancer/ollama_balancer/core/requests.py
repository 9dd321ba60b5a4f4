"""Reading what a client asked for: body, model, pin, affinity key (pure).

The body is parsed once (orjson).  It is re-encoded only when the balancer must
change it (a ``model@backend`` pin or a gateway prefix such as ``ollama/llama3``);
otherwise the client's bytes are forwarded untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson

from ollama_wire.durations import KeepAliveError, parse_keep_alive
from ollama_wire.names import InvalidModelName, canonical, strip_gateway_prefix

__all__ = [
    "SESSION_HEADERS",
    "Intent",
    "InvalidRequest",
    "ParsedRequest",
    "affinity_key",
    "parse_request",
    "session_header",
    "with_model",
    "with_num_ctx",
]


class Intent(StrEnum):
    """What a request asks of the model (docs/ollama.md §4.2, §4.3)."""

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
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = _loads_strict_python(raw)  # what orjson refuses and Python (and Go) accept
    if not isinstance(doc, dict):
        raise InvalidRequest("invalid JSON: expected an object")
    # Depth (a scalar counts as a level) is at most the number of brackets + 1: most
    # bodies need no walk at all.
    if raw.count(b"{") + raw.count(b"[") >= max_depth and _depth(doc, max_depth) > max_depth:
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
            alt_key = canonical(alt_model)
        except InvalidModelName:
            alt_model = None
    try:
        key = canonical(model)
    except InvalidModelName:
        if alt_key is None or alt_model is None:
            raise InvalidRequest("invalid model name") from None  # Ollama's exact answer
        model, key, alt_key, alt_model, rewritten = alt_model, alt_key, None, None, True
    if rewritten:
        doc[model_field] = model
        raw = dumps(doc)
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


def _loads_strict_python(raw: bytes) -> Any:
    """The standard library's parse, for bodies orjson refuses: a lone surrogate escape is
    valid JSON to Python and to Ollama's Go decoder; anything else is refused here too,
    with the standard library's message (the one clients got before orjson)."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid JSON: body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except RecursionError:
        raise InvalidRequest("invalid JSON: nested too deeply") from None


def dumps(doc: Any) -> bytes:
    """Compact JSON of a parsed body (orjson; the standard library for what orjson cannot
    encode, such as a lone surrogate that the client sent)."""
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return json.dumps(doc, separators=(",", ":")).encode()


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
    body = dumps(doc)
    return replace(req, doc=doc, body=body, num_ctx=num_ctx)


def with_model(req: ParsedRequest, model: str, key: str) -> ParsedRequest:
    """The request with its model replaced (gateway prefix dropped)."""
    doc = dict(req.doc)
    field = "model" if "model" in doc else "name"
    doc[field] = model
    body = dumps(doc)
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


#: Headers that name a conversation, in order of precedence: ours, then what coding agents
#: send on every request of a session (docs/clients.md "Conversation affinity").
SESSION_HEADERS = (
    "X-Session-ID",  # ollama-fleet's own (and LiteLLM's, NeMo Gym's convention)
    "X-Claude-Code-Session-Id",  # Claude Code
    "session_id",  # Codex CLI (also sends it as prompt_cache_key)
    "X-OpenCode-Session",  # OpenCode
    "X-Qwen-Code-Session-Id",  # Qwen Code
)
_LONGEST_SESSION = 256


def session_header(headers: Mapping[str, str]) -> str | None:
    """The first session header of :data:`SESSION_HEADERS` the request carries (its value)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()
    return None


def affinity_key(doc: Mapping[str, Any], key: str, session: str | None) -> str | None:
    """A conversation's identity, from the first of (docs/clients.md):

    1. ``session``: a session header (:func:`session_header`: ours, then coding agents');
    2. ``prompt_cache_key`` (OpenAI's field made for exactly this);
    3. ``metadata.user_id`` (Anthropic's; Claude Code puts its session id in it);
    4. ``user`` (OpenAI's end-user id, the cache key before ``prompt_cache_key``);
    5. a hash of the conversation's opening (system prompt + first user turn).

    Requests with one identity reuse Ollama's prompt cache on the pod that served the
    earlier turns.  The hash is fed what the messages are: role and text as they came,
    images (base64 strings, often megabytes) as they came, never re-serialised.
    """
    if session:
        return "s:" + session[:_LONGEST_SESSION]
    named = _named_conversation(doc)
    if named is not None:
        return named
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
    h = hashlib.blake2b(digest_size=16)
    _feed(h, key)
    for item in opening:
        _feed_value(h, item)
    return "p:" + h.hexdigest()


def _named_conversation(doc: Mapping[str, Any]) -> str | None:
    """An identity the body names: prompt_cache_key, metadata.user_id, user (in that order)."""
    cache_key = doc.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key.strip():
        return "k:" + cache_key.strip()[:_LONGEST_SESSION]
    metadata = doc.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id.strip():
        return "u:" + user_id.strip()[:_LONGEST_SESSION]
    user = doc.get("user")
    if isinstance(user, str) and user.strip():
        return "u:" + user.strip()[:_LONGEST_SESSION]
    return None


def _feed(h: Any, text: str) -> None:
    """One string, length-prefixed so that no two different sequences feed the same bytes."""
    data = text.encode("utf-8", "surrogatepass")
    h.update(b"s%d:" % len(data))
    h.update(data)


_PLAIN_FIELDS = ("role", "content", "images")


def _feed_value(h: Any, value: Any) -> None:
    """A message (or a system string) into the hash: strings directly, anything else
    (content parts, tool calls) as canonical JSON — sorted keys, so order does not matter."""
    if isinstance(value, str):
        _feed(h, value)
        return
    if not isinstance(value, dict):
        h.update(b"j")
        h.update(_canonical_json(value))
        return
    h.update(b"m")
    for name in _PLAIN_FIELDS:
        field = value.get(name)
        if field is None:
            h.update(b"-")
        elif isinstance(field, str):
            _feed(h, field)
        elif name == "images" and isinstance(field, list):
            h.update(b"i%d:" % len(field))
            for image in field:
                _feed_value(h, image)
        else:
            h.update(b"j")
            h.update(_canonical_json(field))
    rest = {k: v for k, v in value.items() if k not in _PLAIN_FIELDS}
    if rest:
        h.update(b"r")
        h.update(_canonical_json(rest))


def _canonical_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate: rare enough to be slow
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
