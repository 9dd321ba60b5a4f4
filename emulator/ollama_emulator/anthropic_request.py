"""Anthropic Messages requests read the way Ollama reads them (pure).

docs/anthropic.md §3 and §8: gin binds the body into
``anthropic.MessagesRequest`` (first JSON value only, keys matched without regard
to case, the last duplicate winning, ``null`` meaning absent, a wrong type anywhere
a 400 carrying Go's text), the middleware validates ``model``, ``max_tokens`` and
``messages`` in that order, and ``FromMessagesRequest`` turns the rest into a
native ``/api/chat`` request: content blocks into messages, tools into functions,
``thinking``/``output_config`` into ``think``, sampling fields into options.  The
``message_start`` input-token estimate (UTF-8 bytes / 4) is computed here too.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .gojson import GoJSONError, decode_first, go_kind
from .wire import go_json

__all__ = [
    "MessagesRequest",
    "NativeMessage",
    "RequestError",
    "Tool",
    "estimate_input_tokens",
    "parse_request",
]


class RequestError(ValueError):
    """A request the middleware refuses: 400 ``invalid_request_error`` with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class NativeMessage:
    """One message of the native ``/api/chat`` request."""

    role: str
    content: str = ""
    thinking: str = ""
    images: int = 0
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class Tool:
    """A native function tool."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    web_search: bool = False
    """The fixed ``web_search(query)`` function a ``web_search*`` tool becomes."""


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    max_tokens: int
    stream: bool
    messages: tuple[NativeMessage, ...]
    tools: tuple[Tool, ...]
    think: bool | str | None
    """``think`` for the handler: unset (None), a bool, or a level."""
    options: Mapping[str, Any]
    estimate: int
    """``message_start.usage.input_tokens``: the byte-length/4 estimate of docs/anthropic.md §8."""


# --------------------------------------------------------------------- decoding
# Go types of MessagesRequest's fields (anthropic/anthropic.go:66-86), for the
# decoder's error texts.
_FIELDS = {
    "model": "string",
    "max_tokens": "int",
    "messages": "[]anthropic.MessageParam",
    "system": "any",
    "stream": "bool",
    "temperature": "float64",
    "top_p": "float64",
    "top_k": "int",
    "stop_sequences": "[]string",
    "tools": "[]anthropic.Tool",
    "tool_choice": "anthropic.ToolChoice",
    "thinking": "anthropic.ThinkingConfig",
    "output_config": "anthropic.OutputConfig",
    "metadata": "anthropic.Metadata",
}
_SUBFIELDS = {
    "MessageParam": {"role": "string", "content": "any"},
    "Tool": {
        "type": "string",
        "name": "string",
        "description": "string",
        "input_schema": "any",
        "max_uses": "int",
    },
    "ToolChoice": {"type": "string", "name": "string", "disable_parallel_tool_use": "bool"},
    "ThinkingConfig": {"type": "string", "budget_tokens": "int"},
    "OutputConfig": {"effort": "string"},
    "Metadata": {"user_id": "string"},
    "ContentBlock": {
        "type": "string",
        "text": "string",
        "thinking": "string",
        "signature": "string",
        "source": "anthropic.ImageSource",
        "id": "string",
        "name": "string",
        "tool_use_id": "string",
        "is_error": "bool",
    },
    "ImageSource": {"type": "string", "media_type": "string", "data": "string", "url": "string"},
}


def _fold(doc: Mapping[str, Any], known: Mapping[str, str]) -> dict[str, Any]:
    """Go's field matching: case-insensitive, the last duplicate wins, null is absent."""
    lower = {k.lower(): k for k in known}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = lower.get(key.lower())
        if name is None:
            continue
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _type_error(value: Any, where: str, go: str) -> RequestError:
    literal = go == "int" and isinstance(value, float)
    kind = go_kind(value, literal=literal)
    return RequestError(f"json: cannot unmarshal {kind} into {where} of type {go}")


def _fits(value: Any, go: str) -> bool:
    if go == "any":
        return True
    if go == "string":
        return isinstance(value, str)
    if go == "bool":
        return isinstance(value, bool)
    if go == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if go == "float64":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if go.startswith("[]"):
        return isinstance(value, list)
    return isinstance(value, dict)


def _check(doc: Mapping[str, Any], known: Mapping[str, str], struct: str, path: str) -> None:
    """The first type error in document order, as Go's decoder reports it."""
    for key, value in doc.items():
        go = known.get(key)
        if go is None or value is None:
            continue
        where = f"Go struct field {struct}.{path}{key}"
        if not _fits(value, go):
            raise _type_error(value, where, go)
        if go == "[]string":
            for item in value:
                if item is not None and not isinstance(item, str):
                    raise _type_error(item, where, "string")
        elif go.startswith("[]anthropic.") or go.startswith("anthropic."):
            inner = go.removeprefix("[]").removeprefix("anthropic.")
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item is None:
                    continue
                if not isinstance(item, dict):
                    raise _type_error(item, where, go.removeprefix("[]"))
                _check(_fold(item, _SUBFIELDS[inner]), _SUBFIELDS[inner], inner, f"{path}{key}.")


# ------------------------------------------------------------------- conversion
_BASE64 = re.compile(rb"[A-Za-z0-9+/]")


def _base64_error(data: str) -> str | None:
    """Go's ``base64.StdEncoding`` error (padding required), or None when valid."""
    raw = data.encode()
    body = raw.rstrip(b"=")
    for i, byte in enumerate(body):
        if not _BASE64.match(bytes([byte])):
            return f"illegal base64 data at input byte {i}"
    if len(raw) % 4:  # an incomplete quantum: Go points at its first byte
        return f"illegal base64 data at input byte {len(raw) - len(raw) % 4}"
    if len(raw) - len(body) > 2:
        return f"illegal base64 data at input byte {len(body) + 2}"
    try:
        binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return f"illegal base64 data at input byte {len(body)}"
    return None


def _image(block: Mapping[str, Any], missing: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise RequestError(missing)
    kind = source.get("type")
    if kind != "base64":
        raise RequestError(
            f"invalid image source type: {kind or ''}. Only base64 images are supported."
        )
    problem = _base64_error(str(source.get("data") or ""))
    if problem is not None:
        raise RequestError(f"invalid base64 image data: {problem}")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return [{"type": "text", "text": ""}]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(
            f"json: cannot unmarshal {go_kind(content)} into Go value of type "
            "[]anthropic.ContentBlock"
        )
    out = []
    for item in content:
        if not isinstance(item, dict):
            raise RequestError(
                f"json: cannot unmarshal {go_kind(item)} into Go value of type "
                "anthropic.ContentBlock"
            )
        known = _SUBFIELDS["ContentBlock"]
        folded = {k.lower(): v for k, v in item.items() if v is not None}
        _check({k: v for k, v in folded.items() if k in known}, known, "ContentBlock", "")
        out.append(folded)
    return out


def _tool_result(block: Mapping[str, Any]) -> NativeMessage:
    content = block.get("content")
    text, images = "", 0
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                text += part["text"]
            elif part.get("type") == "image":
                _image(part, "invalid tool_result image source")
                images += 1
    return NativeMessage(
        "tool", text, images=images, tool_call_id=str(block.get("tool_use_id") or "")
    )


def _web_search_result(block: Mapping[str, Any]) -> NativeMessage:
    content = block.get("content")
    if isinstance(content, list):
        text = "".join(
            f"- {r.get('title', '')}: {r.get('url', '')}\n" for r in content if isinstance(r, dict)
        )
    else:
        code = content.get("error_code") if isinstance(content, dict) else None
        text = "web_search_tool_result_error" + (f": {code}" if code else "")
    return NativeMessage("tool", text, tool_call_id=str(block.get("tool_use_id") or ""))


def _fold_message(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A message's fields; ``content`` is a raw JSON value, so null differs from absent."""
    out = _fold(doc, _SUBFIELDS["MessageParam"])
    if any(key.lower() == "content" for key in doc):
        out.setdefault("content", None)
    return out


def _message(doc: Mapping[str, Any]) -> list[NativeMessage]:
    """One Anthropic message → native messages (tool results first for ``user``)."""
    if "content" not in doc:
        raise RequestError("unexpected end of JSON input")
    role = str(doc.get("role") or "").lower()
    text, thinking, images = "", "", 0
    calls: list[dict[str, Any]] = []
    tools: list[NativeMessage] = []
    for block in _blocks(doc.get("content")):
        kind = block.get("type")
        if kind == "text":
            text += str(block.get("text") or "")
        elif kind == "image":
            _image(block, "invalid image source")
            images += 1
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise RequestError("tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise RequestError("tool_use block missing required 'name' field")
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise RequestError(
                    f"json: cannot unmarshal {go_kind(arguments)} into Go value of type "
                    "map[string]interface {}"
                )
            function = {"name": str(block.get("name") or ""), "arguments": arguments}
            calls.append({"id": str(block.get("id") or ""), "function": function})
        elif kind == "tool_result":
            tools.append(_tool_result(block))
        elif kind == "thinking":
            thinking = str(block.get("thinking") or "")  # the last one wins
        elif kind == "web_search_tool_result":
            tools.append(_web_search_result(block))
        # anything else (redacted_thinking, document, ...) is dropped silently
    main: list[NativeMessage] = []
    if text or images or calls or thinking:
        main.append(NativeMessage(role, text, thinking, images, tuple(calls)))
    return [*tools, *main] if role == "user" else [*main, *tools]


def _system(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            str(b.get("text") or "")
            for b in value
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


_SCHEMA_KEYS = ("type", "$defs", "items", "required", "properties")
_PROPERTY_KEYS = ("anyOf", "type", "items", "description", "enum", "properties", "required")


def _schema(name: str, schema: Any) -> dict[str, Any]:
    """``input_schema`` decoded into ``api.ToolFunctionParameters`` (other keys dropped)."""
    if schema is None:
        return {}

    def bad(value: Any, go: str) -> RequestError:
        return RequestError(
            f'invalid input_schema for tool "{name}": json: cannot unmarshal '
            f"{go_kind(value)} into Go value of type {go}"
        )

    if not isinstance(schema, dict):
        raise bad(schema, "api.ToolFunctionParameters")
    out = {k: schema[k] for k in _SCHEMA_KEYS if schema.get(k) is not None}
    properties = out.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise bad(properties, "map[string]api.ToolProperty")
        kept = {}
        for key, prop in properties.items():
            if not isinstance(prop, dict):
                raise bad(prop, "api.ToolProperty")
            kept[key] = {k: prop[k] for k in _PROPERTY_KEYS if prop.get(k) is not None}
        out["properties"] = kept
    required = out.get("required")
    if required is not None and not (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    ):
        raise bad(required, "[]string")
    return out


_WEB_SEARCH = Tool(
    "web_search",
    "Search the web for current information",
    {
        "type": "object",
        "required": ["query"],
        "properties": {"query": {"type": "string", "description": "The search query"}},
    },
    web_search=True,
)


def _tools(raw: list[Any]) -> tuple[Tool, ...]:
    docs = [_fold(t, _SUBFIELDS["Tool"]) for t in raw if isinstance(t, dict)]
    searching = any(str(t.get("type") or "").startswith("web_search") for t in docs)
    out: list[Tool] = []
    for tool in docs:
        name = str(tool.get("name") or "")
        if str(tool.get("type") or "").startswith("web_search"):
            if _WEB_SEARCH not in out:
                out.append(_WEB_SEARCH)
            continue
        if searching and name == "web_search":
            continue  # the built-in search replaces a custom tool of that name
        params = _schema(name, tool.get("input_schema"))
        out.append(Tool(name, str(tool.get("description") or ""), params))
    return tuple(out)


def _think(doc: Mapping[str, Any]) -> bool | str | None:
    thinking = doc.get("thinking") or {}
    kind = _fold(thinking, _SUBFIELDS["ThinkingConfig"]).get("type")
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    effort = _fold(doc.get("output_config") or {}, _SUBFIELDS["OutputConfig"]).get("effort")
    level = str(effort or "").strip().lower()
    level = "high" if level == "xhigh" else level
    return level if level in ("low", "medium", "high", "max") else None


# --------------------------------------------------------------------- estimate
def _block_json(block: Mapping[str, Any]) -> bytes:
    order = ["type", "text", "thinking", "signature", "source", "id", "name", "input"]
    order += ["tool_use_id", "content", "is_error"]
    return go_json({k: block[k] for k in order if block.get(k) not in (None, "", False)})


def estimate_input_tokens(doc: Mapping[str, Any]) -> int:
    """anthropic.md §8: UTF-8 bytes of system, roles, texts, thinking, tool blocks and tools, / 4.

    At least 1 when there is any message or a system prompt, else 0.
    """
    total = 0
    system = doc.get("system")
    if isinstance(system, str):
        total += len(system.encode())
    elif isinstance(system, list):
        total += sum(len(str(b.get("text") or "").encode()) for b in system if isinstance(b, dict))
    messages = doc.get("messages") or []
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += len(str(message.get("role") or "").encode())
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, dict):
                continue
            total += len(str(block.get("text") or "").encode())
            total += len(str(block.get("thinking") or "").encode())
            if block.get("type") in ("tool_use", "tool_result"):
                total += len(_block_json(block))
    for tool in doc.get("tools") or []:
        if isinstance(tool, dict):
            total += len(str(tool.get("name") or "").encode())
            total += len(str(tool.get("description") or "").encode())
            if tool.get("input_schema") is not None:
                total += len(go_json(tool["input_schema"]))
    estimate = total // 4
    if estimate == 0 and (messages or system):
        return 1
    return estimate


# ------------------------------------------------------------------------ parse
def parse_request(raw: bytes) -> MessagesRequest:
    """The native request a ``/v1/messages`` body becomes, or :class:`RequestError`."""
    try:
        value = decode_first(raw)
    except GoJSONError as exc:
        raise RequestError(exc.message) from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RequestError(
            f"json: cannot unmarshal {go_kind(value)} into Go value of type "
            "anthropic.MessagesRequest"
        )
    doc = _fold(value, _FIELDS)
    _check(doc, _FIELDS, "MessagesRequest", "")
    if not doc.get("model"):
        raise RequestError("model is required")
    max_tokens = doc.get("max_tokens") or 0
    if max_tokens <= 0:
        raise RequestError("max_tokens is required and must be positive")
    if not doc.get("messages"):
        raise RequestError("messages is required")
    system = _system(doc.get("system"))
    native = [NativeMessage("system", system)] if system else []
    for message in doc["messages"]:
        native += _message(_fold_message(message))
    options: dict[str, Any] = {"num_predict": max_tokens}
    for key, option in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if key in doc:
            options[option] = doc[key]
    if doc.get("stop_sequences"):
        options["stop"] = list(doc["stop_sequences"])
    return MessagesRequest(
        model=str(doc["model"]),
        max_tokens=int(max_tokens),
        stream=bool(doc.get("stream", False)),
        messages=tuple(native),
        tools=_tools(doc.get("tools") or []),
        think=_think(doc),
        options=options,
        estimate=estimate_input_tokens(doc),
    )
