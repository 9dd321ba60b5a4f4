"""Native chat chunks → Anthropic Messages answers, as Ollama's ``AnthropicWriter`` does (pure).

docs/anthropic.md §4 (the non-streamed body) and §5 (the event stream):
``message_start`` on the first chunk, then per chunk thinking → text → tool calls,
at most one block open at a time, one ``input_json_delta`` carrying a tool call's
whole arguments, calls de-duplicated by id, thinking dropped once its block has
closed, and ``message_delta`` + ``message_stop`` on the done chunk.  No ``ping``,
no ``error`` event, no ``[DONE]``: a stream that fails simply stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .wire import go_json

__all__ = ["EventStream", "NativeChunk", "ToolCall", "message_body", "sse", "stop_reason"]

Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, Any] | None
    """None when the call carried no argument object at all (``input`` is then omitted)."""


@dataclass(frozen=True)
class NativeChunk:
    """What ``AnthropicWriter`` reads from one native ``ChatResponse``."""

    thinking: str = ""
    content: str = ""
    tool_calls: Sequence[ToolCall] = ()
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0


def stop_reason(done_reason: str, tool_calls: bool) -> str:
    """anthropic.md §4.2: ``tool_use`` if a tool was called; ``""``: the key is left out."""
    if tool_calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens", "": ""}.get(done_reason, "stop_sequence")


def sse(event: Event) -> bytes:
    """``event: <type>\\ndata: <compact JSON>\\n\\n``; the name always equals the type."""
    name, data = event
    return b"event: " + name.encode() + b"\ndata: " + go_json(data) + b"\n\n"


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


def message_body(
    message_id: str,
    model: str,
    *,
    thinking: str,
    text: str,
    tool_calls: Sequence[ToolCall],
    done_reason: str,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """The non-streamed answer: thinking, text, tool_use blocks in that order, each merged."""
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": thinking})
    if text:
        content.append({"type": "text", "text": text})
    for call in tool_calls:
        block: dict[str, Any] = {"type": "tool_use", "id": call.id, "name": call.name}
        if call.arguments is not None:
            block["input"] = dict(call.arguments)
        content.append(block)
    body: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content or None,  # a nil slice in Go: null, not []
    }
    reason = stop_reason(done_reason, bool(tool_calls))
    if reason:
        body["stop_reason"] = reason
    body["usage"] = _usage(input_tokens, output_tokens)
    return body


@dataclass
class EventStream:
    """The state machine of anthropic.md §5.3: :meth:`feed` one native chunk, get its events."""

    message_id: str
    model: str
    estimate: int
    """Input tokens for ``message_start`` when the first chunk carries no count (normal)."""
    index: int = 0
    open: str | None = None
    """``"thinking"`` or ``"text"`` while a block is open."""
    thinking_done: bool = False
    started: bool = False
    finished: bool = False
    sent: set[str] = field(default_factory=set)
    tool_used: bool = False

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        if self.open == "thinking":
            self.thinking_done = True
        self.open = None
        event = ("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.index += 1
        return [event]

    def _start(self, block: dict[str, Any]) -> Event:
        data = {"type": "content_block_start", "index": self.index, "content_block": block}
        return ("content_block_start", data)

    def _delta(self, delta: dict[str, Any]) -> Event:
        data = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return ("content_block_delta", data)

    def feed(self, chunk: NativeChunk) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self.started = True
            message = {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": _usage(chunk.prompt_eval_count or self.estimate, 0),
            }
            events.append(("message_start", {"type": "message_start", "message": message}))
        if chunk.thinking and not self.thinking_done:
            if self.open == "text":
                events += self._close()
            if self.open is None:
                events.append(self._start({"type": "thinking", "thinking": ""}))
                self.open = "thinking"
            events.append(self._delta({"type": "thinking_delta", "thinking": chunk.thinking}))
        if chunk.content:
            if self.open == "thinking":
                events += self._close()
            if self.open is None:
                events.append(self._start({"type": "text", "text": ""}))
                self.open = "text"
            events.append(self._delta({"type": "text_delta", "text": chunk.content}))
        for call in chunk.tool_calls:
            if call.id in self.sent:
                continue  # de-duplicated by id (an empty id too, after the first)
            self.sent.add(call.id)
            self.tool_used = True
            events += self._close()
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            events.append(self._start(block))
            arguments = go_json(dict(call.arguments or {})).decode()
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self.index})
            )
            self.index += 1
        if chunk.done and not self.finished:
            self.finished = True
            events += self._close()
            reason = stop_reason(chunk.done_reason, self.tool_used)
            delta = {"stop_reason": reason} if reason else {}
            usage = _usage(chunk.prompt_eval_count, chunk.eval_count)
            events.append(
                ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            )
            events.append(("message_stop", {"type": "message_stop"}))
        return events
