"""The assembled answer: a complete internal stream made into Ollama's non-streamed body (pure).

A request whose client asked for one JSON answer is sent upstream as a stream when it
might be preempted, so that what was generated survives the preemption; the stream
(possibly stitched from several attempts) is then assembled into exactly the body Ollama
would have answered, the way Ollama itself assembles it:

* **native** (``/api/chat``, ``/api/generate``): the final ``done`` line, with the
  content (``message.content`` or ``response``), the thinking and the tool calls of all
  lines gathered into it; ``context`` and the metrics are the final line's;
* **OpenAI** (``chat.completion``): the chunks' ``id``, ``created``, ``model`` and
  ``system_fingerprint``; one choice whose message gathers content, reasoning and tool
  calls; the finish reason; the usage chunk's counts;
* **Anthropic** (``message``): ``message_start``'s id and model; at most one thinking
  block, one text block, then the tool calls, as Ollama's non-streamed answer has them
  (``content`` is null when all are empty); ``message_delta``'s stop reason and usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .dialects import Dialect
from .frames import go_json, loads, split, sse_event, terminator

__all__ = ["Assembled", "IncompleteStream", "assemble"]

#: gin's ``c.JSON`` (native and OpenAI answers); Anthropic's writer sets no charset.
_GIN_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Assembled:
    doc: dict[str, Any]
    body: bytes
    content_type: str


class IncompleteStream(Exception):
    """The stream failed or stopped before its end: there is no answer to assemble."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def assemble(dialect: Dialect, chunks: Iterable[bytes]) -> Assembled:
    """The non-streamed answer made of a complete stream's chunks (any split)."""
    frames, _ = split(b"".join(chunks), terminator(dialect))
    if dialect is Dialect.OPENAI:
        doc = _openai(frames)
        return Assembled(doc, go_json(doc), _GIN_JSON)
    if dialect is Dialect.ANTHROPIC:
        doc = _anthropic(frames)
        return Assembled(doc, go_json(doc) + b"\n", "application/json")
    doc = _native(frames, dialect is Dialect.CHAT)
    return Assembled(doc, go_json(doc), _GIN_JSON)


# Go's api.Message field order.
_MESSAGE_ORDER = (
    "role",
    "content",
    "thinking",
    "images",
    "tool_calls",
    "tool_name",
    "tool_call_id",
)


def _native(frames: list[bytes], chat: bool) -> dict[str, Any]:
    content: list[str] = []
    thinking: list[str] = []
    calls: list[Any] = []
    logprobs: list[Any] = []
    final: dict[str, Any] | None = None
    for frame in frames:
        doc = loads(frame)
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            raise IncompleteStream(str(doc["error"]))
        part = doc.get("message") if chat else doc
        if isinstance(part, dict):
            content.append(_str(part.get("content" if chat else "response")))
            thinking.append(_str(part.get("thinking")))
            if isinstance(part.get("tool_calls"), list):
                calls.extend(part["tool_calls"])
        if isinstance(doc.get("logprobs"), list):
            logprobs.extend(doc["logprobs"])
        if doc.get("done"):
            final = doc
            break
    if final is None:
        raise IncompleteStream("the stream ended before its final line")
    text, thought = "".join(content), "".join(thinking)
    out: dict[str, Any] = {}
    for key, value in final.items():
        if chat and key == "message":
            out[key] = _message(value if isinstance(value, dict) else {}, text, thought, calls)
        elif not chat and key == "response":
            out[key] = text
            if thought:
                out["thinking"] = thought
        elif not chat and key == "thinking":
            continue  # placed after the response
        elif not chat and key == "tool_calls":
            continue
        else:
            out[key] = value
    if not chat and calls:
        out["tool_calls"] = calls
    if logprobs:
        out["logprobs"] = logprobs
    return out


def _message(last: dict[str, Any], text: str, thought: str, calls: list[Any]) -> dict[str, Any]:
    fields = {**last, "role": last.get("role") or "assistant", "content": text}
    fields.pop("thinking", None)
    fields.pop("tool_calls", None)
    if thought:
        fields["thinking"] = thought
    if calls:
        fields["tool_calls"] = calls
    ordered = {k: fields.pop(k) for k in _MESSAGE_ORDER if k in fields}
    return ordered | fields


def _openai(frames: list[bytes]) -> dict[str, Any]:
    first: dict[str, Any] | None = None
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[Any] = []
    finish: Any = None
    usage: Any = None
    for frame in frames:
        _, data = sse_event(frame)
        if data == b"[DONE]":
            break
        doc = loads(data)
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            error = doc["error"]
            raise IncompleteStream(str(error.get("message") if isinstance(error, dict) else error))
        if first is None:
            first = doc
        if isinstance(doc.get("usage"), dict) and not doc.get("choices"):
            usage = doc["usage"]
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content.append(_str(delta.get("content")))
                reasoning.append(_str(delta.get("reasoning")))
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        _merge_call(calls, call)
            probs = choice.get("logprobs")
            if isinstance(probs, dict) and isinstance(probs.get("content"), list):
                logprobs.extend(probs["content"])
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
    if first is None or finish is None:
        raise IncompleteStream("the stream ended before its finish reason")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if any(reasoning):
        message["reasoning"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    choice_out: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if logprobs:
        choice_out["logprobs"] = {"content": logprobs}
    out: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
    }
    if "system_fingerprint" in first:
        out["system_fingerprint"] = first["system_fingerprint"]
    out["choices"] = [choice_out]
    if usage is None:  # a stream without its usage chunk: what can be counted
        pieces = sum(1 for piece in content if piece)
        usage = {"prompt_tokens": 0, "completion_tokens": pieces, "total_tokens": pieces}
    out["usage"] = usage
    return out


def _merge_call(calls: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Ollama streams whole calls; a fragment (no id, a known index) extends its call."""
    index = call.get("index")
    known = next((c for c in calls if c.get("index") == index), None) if index is not None else None
    if known is not None and not call.get("id"):
        function, more = known.setdefault("function", {}), call.get("function")
        if isinstance(function, dict) and isinstance(more, dict):
            function["arguments"] = _str(function.get("arguments")) + _str(more.get("arguments"))
        return
    calls.append({**call, "function": dict(call.get("function") or {})})


def _anthropic(frames: list[bytes]) -> dict[str, Any]:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    text: list[str] = []
    thinking: list[str] = []
    arguments: dict[int, list[str]] = {}
    delta: dict[str, Any] | None = None
    usage: dict[str, Any] = {}
    for frame in frames:
        name, data = sse_event(frame)
        doc = loads(data)
        if not isinstance(doc, dict):
            continue
        kind = doc.get("type") or name.decode("utf-8", "replace")
        index = doc.get("index")
        if kind == "content_block_delta" and isinstance(index, int):
            d = _dict(doc.get("delta"))
            if d.get("type") == "text_delta":
                text.append(_str(d.get("text")))
            elif d.get("type") == "thinking_delta":
                thinking.append(_str(d.get("thinking")))
            elif d.get("type") == "input_json_delta":
                arguments.setdefault(index, []).append(_str(d.get("partial_json")))
        elif kind == "content_block_start" and isinstance(index, int):
            block = doc.get("content_block")
            blocks[index] = block if isinstance(block, dict) else {}
        elif kind == "message_start" and message is None:
            message = _dict(doc.get("message"))
            start_usage = message.get("usage")
            if isinstance(start_usage, dict):
                usage.update(start_usage)
        elif kind == "message_delta":
            delta = _dict(doc.get("delta"))
            if isinstance(doc.get("usage"), dict):
                usage.update(doc["usage"])
        elif kind == "message_stop":
            break
        elif kind == "error":
            error = doc.get("error")
            raise IncompleteStream(str(error.get("message") if isinstance(error, dict) else error))
    if message is None or delta is None:
        raise IncompleteStream("the stream ended before its message_delta")
    content: list[dict[str, Any]] = []
    if any(thinking):
        content.append({"type": "thinking", "thinking": "".join(thinking)})
    if any(text):
        content.append({"type": "text", "text": "".join(text)})
    for index in sorted(blocks):
        block = blocks[index]
        if block.get("type") not in ("tool_use", "server_tool_use"):
            continue
        call: dict[str, Any] = {k: block[k] for k in ("type", "id", "name") if k in block}
        raw = "".join(arguments.get(index, ()))
        parsed = loads(raw.encode()) if raw else block.get("input")
        if parsed is not None:
            call["input"] = parsed
        content.append(call)
    out: dict[str, Any] = {
        "id": message.get("id"),
        "type": "message",
        "role": message.get("role") or "assistant",
        "model": message.get("model"),
        "content": content or None,  # Ollama's nil slice: null, not []
    }
    if delta.get("stop_reason"):
        out["stop_reason"] = delta["stop_reason"]
    if "stop_sequence" in delta:
        out["stop_sequence"] = delta["stop_sequence"]
    out["usage"] = {
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
    }
    return out


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
