"""What was relayed: the partial answer a preempted generation leaves behind (pure).

The relay keeps the raw chunks it forwarded to the client.  :func:`partial_of` reads them
once, when the scheduler takes the slot back, and returns a :class:`Partial`: the answer's
text so far, how many tokens that is, whether it can be continued at all, and the stream's
identity that the continuation must keep (OpenAI's ``id``/``created``, Anthropic's message
and open content block).

Because the chunks are what the *client* received, a request preempted a second time is
read the same way: the chunks of the first attempt followed by the stitched ones of the
second give the partial answer of both, under the first attempt's identity.

Tokens are counted as the content pieces relayed: Ollama streams one frame per generated
token (a token that decodes to nothing, or to half a UTF-8 character, is held back and
joins the next piece), so the count is the model's ``eval_count`` up to those few.

A frame cut off at the end of the chunks is not part of the answer: it is dropped, and
:attr:`Partial.dangling` says how many of its bytes the client already holds.  The relay
should cut upstream only at a frame boundary (``dangling == 0``): after a fragment, no
continuation can make the client's stream well-formed again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .dialects import Dialect, Obstacle
from .frames import loads, split, sse_event, terminator

__all__ = ["ChunkIdentity", "MessageIdentity", "Partial", "chunk_head", "partial_of"]


@dataclass(frozen=True, slots=True)
class ChunkIdentity:
    """What an OpenAI stream's chunks repeat, as the client first saw it."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None
    head: bytes
    """The chunk JSON up to its ``"choices"`` key, byte for byte (``{"id":…,``): a
    continuation's chunks get this head in place of theirs."""
    role_sent: bool
    """A delta carried ``role``: the continuation's first delta must not repeat it."""


@dataclass(frozen=True, slots=True)
class MessageIdentity:
    """What an Anthropic stream established in the client's view."""

    id: str
    model: str
    input_tokens: int
    """``message_start``'s input tokens (Ollama: a length/4 estimate, not a count)."""
    open_block: int | None
    """Index of the content block still open (the text being continued), if any."""
    blocks: int
    """Content blocks started so far: a new block continues at this index."""


@dataclass(frozen=True, slots=True)
class Partial:
    """The answer relayed so far, and what a continuation needs to know of it."""

    dialect: Dialect
    text: str = ""
    tokens: int = 0
    """Generated pieces relayed (content, and thinking, which blocks resuming anyway)."""
    ended: bool = False
    """The stream already ended: nothing is left to resume."""
    obstacle: Obstacle | None = None
    """Why what was relayed cannot be continued (thinking, a tool call, several choices)."""
    dangling: int = 0
    """Bytes relayed after the last complete frame (a fragment the client holds)."""
    model: str | None = None
    prompt_tokens: int | None = None
    """The prompt's token count if a relayed frame reported one (Ollama reports it on the
    final frame, so a cut stream rarely has it)."""
    chunk: ChunkIdentity | None = None
    """OpenAI: the chunks' identity (None when no chunk was relayed)."""
    message: MessageIdentity | None = None
    """Anthropic: the message's identity (None when ``message_start`` was not relayed)."""

    @property
    def resumable(self) -> bool:
        return not self.ended and self.obstacle is None

    @property
    def why_not(self) -> Obstacle | None:
        """The obstacle to resuming, :attr:`Obstacle.ENDED` for a stream that ended."""
        return Obstacle.ENDED if self.ended else self.obstacle


def partial_of(dialect: Dialect, chunks: Iterable[bytes]) -> Partial:
    """Read the chunks relayed to the client (any split) into a :class:`Partial`."""
    frames, rest = split(b"".join(chunks), terminator(dialect))
    reading = _Reading()
    read = _READERS[dialect]
    for frame in frames:
        if reading.ended:
            break
        read(reading, frame)
    return reading.partial(dialect, len(rest))


@dataclass(slots=True)
class _Reading:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    ended: bool = False
    obstacle: Obstacle | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    # OpenAI
    chunk_doc: dict[str, Any] | None = None
    head: bytes = b""
    role_sent: bool = False
    # Anthropic
    message_doc: dict[str, Any] | None = None
    open_block: int | None = None
    blocks: int = 0

    def block(self, obstacle: Obstacle) -> None:
        if self.obstacle is None:
            self.obstacle = obstacle

    def partial(self, dialect: Dialect, dangling: int) -> Partial:
        chunk = message = None
        if self.chunk_doc is not None:
            doc = self.chunk_doc
            chunk = ChunkIdentity(
                id=_str(doc.get("id")),
                created=_int(doc.get("created")),
                model=_str(doc.get("model")),
                system_fingerprint=_str_or_none(doc.get("system_fingerprint")),
                head=self.head,
                role_sent=self.role_sent,
            )
        if self.message_doc is not None:
            doc = self.message_doc
            usage = doc.get("usage")
            message = MessageIdentity(
                id=_str(doc.get("id")),
                model=_str(doc.get("model")),
                input_tokens=_int(usage.get("input_tokens")) if isinstance(usage, dict) else 0,
                open_block=self.open_block,
                blocks=self.blocks,
            )
        return Partial(
            dialect=dialect,
            text="".join(self.text),
            tokens=self.tokens,
            ended=self.ended,
            obstacle=self.obstacle,
            dangling=dangling,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            chunk=chunk,
            message=message,
        )


def _native(reading: _Reading, frame: bytes, field_name: str) -> None:
    doc = loads(frame)
    if not isinstance(doc, dict):
        return
    if "error" in doc:
        reading.ended = True  # Ollama's (or the balancer's) last word on a failed stream
        return
    if reading.model is None and isinstance(doc.get("model"), str):
        reading.model = doc["model"]
    part = doc.get("message") if field_name == "message" else doc
    if isinstance(part, dict):
        content = part.get("content" if field_name == "message" else "response")
        if isinstance(content, str) and content:
            reading.text.append(content)
            reading.tokens += 1
        if part.get("thinking"):
            reading.tokens += 1
            reading.block(Obstacle.THINKING)
        if part.get("tool_calls"):
            reading.block(Obstacle.TOOL_CALL)
    count = doc.get("prompt_eval_count")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        reading.prompt_tokens = count
    if doc.get("done"):
        reading.ended = True


def _chat(reading: _Reading, frame: bytes) -> None:
    _native(reading, frame, "message")


def _generate(reading: _Reading, frame: bytes) -> None:
    _native(reading, frame, "response")


def _openai(reading: _Reading, frame: bytes) -> None:
    _, data = sse_event(frame)
    if data == b"[DONE]":
        reading.ended = True
        return
    doc = loads(data)
    if not isinstance(doc, dict):
        return
    if "error" in doc:
        reading.ended = True
        return
    if reading.chunk_doc is None:
        reading.chunk_doc = doc
        reading.head = chunk_head(data)
        if isinstance(doc.get("model"), str):
            reading.model = doc["model"]
    usage = doc.get("usage")
    if isinstance(usage, dict):
        count = usage.get("prompt_tokens")
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            reading.prompt_tokens = count
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("index", 0) != 0:
            reading.block(Obstacle.CHOICES)
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if "role" in delta:
                reading.role_sent = True
            content = delta.get("content")
            if isinstance(content, str) and content:
                reading.text.append(content)
                reading.tokens += 1
            if delta.get("reasoning") or delta.get("reasoning_content"):
                reading.tokens += 1
                reading.block(Obstacle.THINKING)
            if delta.get("tool_calls"):
                reading.block(Obstacle.TOOL_CALL)
        if choice.get("finish_reason") is not None:
            reading.ended = True  # the generation is over; [DONE] is only framing


def chunk_head(data: bytes) -> bytes:
    """An OpenAI chunk's JSON before ``"choices"``: ``{"id":…,`` up to the comma.

    Go writes struct fields in a fixed order, ``id`` first and ``choices`` after the fields
    every chunk repeats; ``b""`` for a chunk laid out otherwise (then nothing is spliced).
    """
    cut = data.find(b'"choices"')
    if cut > 0 and data.startswith(b'{"id":') and data[cut - 1 : cut] == b",":
        return data[:cut]
    return b""


_THINKING_BLOCKS = ("thinking", "redacted_thinking")
_TOOL_BLOCKS = ("tool_use", "server_tool_use")


def _anthropic(reading: _Reading, frame: bytes) -> None:
    name, data = sse_event(frame)
    doc = loads(data)
    if not isinstance(doc, dict):
        return
    kind = doc.get("type") or name.decode("utf-8", "replace")
    if kind == "content_block_delta":
        delta = doc.get("delta")
        if not isinstance(delta, dict):
            return
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                reading.text.append(text)
                reading.tokens += 1
        elif delta.get("type") == "thinking_delta":
            reading.tokens += 1
            reading.block(Obstacle.THINKING)
        elif delta.get("type") == "input_json_delta":
            reading.block(Obstacle.TOOL_CALL)
    elif kind == "content_block_start":
        block = doc.get("content_block")
        block_type = block.get("type") if isinstance(block, dict) else None
        if block_type in _THINKING_BLOCKS:
            reading.block(Obstacle.THINKING)
        elif block_type in _TOOL_BLOCKS:
            reading.block(Obstacle.TOOL_CALL)
        index = doc.get("index")
        reading.open_block = index if isinstance(index, int) else reading.blocks
        reading.blocks = max(reading.blocks, reading.open_block + 1)
    elif kind == "content_block_stop":
        if doc.get("index") == reading.open_block:
            reading.open_block = None
    elif kind == "message_start":
        message = doc.get("message")
        if isinstance(message, dict) and reading.message_doc is None:
            reading.message_doc = message
            if isinstance(message.get("model"), str):
                reading.model = message["model"]
    elif kind in ("message_delta", "message_stop", "error"):
        reading.ended = True  # message_delta carries the stop reason: generation is over


_READERS = {
    Dialect.CHAT: _chat,
    Dialect.GENERATE: _generate,
    Dialect.OPENAI: _openai,
    Dialect.ANTHROPIC: _anthropic,
}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
