"""The stitched stream: a continuation's bytes, rewritten so the client's stream goes on (pure).

The client already holds the frames of the earlier attempts (a :class:`~.partial.Partial`
describes them).  A :class:`Stitcher` is fed the continuation's upstream bytes chunk by
chunk and returns what the client should receive next:

* **NDJSON** (``/api/chat``, ``/api/generate``): every line passes as it is, except the
  final ``done`` line, whose metrics are made to cover all attempts (:class:`Spent`).
* **OpenAI SSE**: every chunk gets the original ``id`` and ``created`` (a byte splice of
  the JSON head, which Go writes in a fixed order); the continuation's first delta loses
  the ``role`` the client already has; the usage chunk counts all attempts and is kept
  only when the client asked for it (``stream_options.include_usage``) or the answer is
  being assembled; ``[DONE]`` comes once, from the continuation.
* **Anthropic SSE**: the continuation's ``message_start`` and its ``content_block_start``
  for the block the client has open are dropped, as are ``ping`` events; deltas go on in
  the same block; ``message_delta`` counts all attempts' output tokens.

Per chunk, the work is a search for the frame terminator and, for SSE, a look at each
event's first bytes; JSON is parsed only for the frames that must change (the final line,
usage, the few block starts) and where a splice cannot be done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .dialects import Dialect
from .frames import go_json, loads, sse_event
from .partial import Partial, chunk_head

__all__ = ["METRICS", "Spent", "Stitcher", "stitcher"]

#: The native final line's metrics, in Ollama's order (each left out when zero).
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@dataclass(frozen=True, slots=True)
class Spent:
    """What the earlier attempts cost, as far as the shell measured it (nanoseconds).

    A cut stream never carried its metrics (they come on the final line), so whatever is
    not given here is taken from the continuation's own report.
    """

    load_ns: int | None = None
    """The first attempt's load time; None: the continuation's ``load_duration``."""
    prompt_eval_ns: int = 0
    """Prompt processing of the earlier attempts, added to the continuation's."""
    eval_ns: int | None = None
    """Generating the partial answer; None: its tokens at the continuation's rate."""


def stitcher(
    partial: Partial,
    doc: Mapping[str, Any],
    *,
    clock: Callable[[], float],
    started: float,
    spent: Spent | None = None,
) -> Stitcher:
    """A stitcher for the continuation of ``partial``, whose original request was ``doc``.

    ``clock`` (seconds, the shell's monotonic clock) is read once, at the final line, for
    ``total_duration``: the time since ``started``, when the request arrived.
    """
    kinds: dict[Dialect, type[Stitcher]] = {
        Dialect.CHAT: _Native,
        Dialect.GENERATE: _Native,
        Dialect.OPENAI: _OpenAI,
        Dialect.ANTHROPIC: _Anthropic,
    }
    return kinds[partial.dialect](partial, doc, clock, started, spent or Spent())


class Stitcher:
    """Feed it the continuation's chunks; send the client what it returns."""

    _end = b"\n"

    def __init__(
        self,
        partial: Partial,
        doc: Mapping[str, Any],
        clock: Callable[[], float],
        started: float,
        spent: Spent,
    ) -> None:
        self.partial = partial
        self._clock = clock
        self._started = started
        self._spent = spent
        self._held = b""
        self.ended = False
        """The continuation's end marker went through (done line, ``[DONE]``,
        ``message_stop``, or an error line): the client's stream is complete."""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay for this chunk: its complete frames, rewritten as needed."""
        data = self._held + chunk if self._held else chunk
        cut = data.rfind(self._end)
        if cut < 0:
            self._held = data
            return b""
        cut += len(self._end)
        self._held = data[cut:]
        return self._frames(data[:cut])

    def end(self) -> bytes:
        """Upstream ended cleanly: a last frame it left unterminated, if any.

        Not for a continuation that broke: its incomplete frame was never relayed, and the
        next attempt's partial answer is read from what was."""
        held, self._held = self._held, b""
        return self._frames(held + self._end) if held.strip() else b""

    @property
    def held(self) -> int:
        """Bytes of an incomplete frame waiting for the rest of it."""
        return len(self._held)

    def prompt_tokens(self, reported: int) -> int:
        """The original prompt's token count, given the continuation's (which includes the
        partial answer): the one reported earlier, else the continuation's minus the
        partial answer's tokens (retokenising the answer may differ by a token or two)."""
        if self.partial.prompt_tokens is not None:
            return self.partial.prompt_tokens
        return max(0, reported - self.partial.tokens)

    def _frames(self, block: bytes) -> bytes:  # complete frames, terminators included
        raise NotImplementedError


class _Native(Stitcher):
    _end = b"\n"

    def _frames(self, block: bytes) -> bytes:
        # The final line (done or error) is the stream's last: a block ending in a content
        # line has none, whatever came before it in the block.
        if block.endswith(b'"done":false}\n'):
            return block
        # Inside a JSON string a quote is escaped, so these bytes only occur as keys.
        if b'"done":true' not in block and b'"error"' not in block:
            return block
        out = []
        for line in block.split(b"\n"):
            if line:
                out.append(self._line(line) + b"\n")
        return b"".join(out)

    def _line(self, line: bytes) -> bytes:
        doc = loads(line)
        if not isinstance(doc, dict):
            return line
        if "error" in doc:
            self.ended = True
            return line
        if not doc.get("done"):
            return line
        self.ended = True
        return go_json(_with_metrics(doc, self._metrics(doc)))

    def _metrics(self, doc: dict[str, Any]) -> dict[str, int]:
        got = {key: _int(doc.get(key)) for key in METRICS}
        spent, tokens = self._spent, self.partial.tokens
        earlier_eval = spent.eval_ns
        if earlier_eval is None and got["eval_count"]:
            earlier_eval = tokens * got["eval_duration"] // got["eval_count"]
        total = int((self._clock() - self._started) * 1e9)
        return {
            "total_duration": max(1, total),
            "load_duration": got["load_duration"] if spent.load_ns is None else spent.load_ns,
            "prompt_eval_count": self.prompt_tokens(got["prompt_eval_count"]),
            "prompt_eval_duration": spent.prompt_eval_ns + got["prompt_eval_duration"],
            "eval_count": tokens + got["eval_count"],
            "eval_duration": (earlier_eval or 0) + got["eval_duration"],
        }


def _with_metrics(doc: dict[str, Any], metrics: dict[str, int]) -> dict[str, Any]:
    """``doc`` with its metrics replaced where they stood (zeros left out, as Ollama does)."""
    out: dict[str, Any] = {}
    placed = False
    for key, value in doc.items():
        if key in metrics:
            if not placed:
                out.update((k, v) for k, v in metrics.items() if v)
                placed = True
        else:
            out[key] = value
    if not placed:
        out.update((k, v) for k, v in metrics.items() if v)
    return out


class _OpenAI(Stitcher):
    _end = b"\n\n"

    def __init__(self, partial: Partial, doc: Mapping[str, Any], *args: Any) -> None:
        super().__init__(partial, doc, *args)
        options = doc.get("stream_options")
        asked = isinstance(options, dict) and bool(options.get("include_usage"))
        # An answer being assembled (the client asked for no stream) needs the usage.
        self._usage = asked or not doc.get("stream")
        self._ident = partial.chunk
        self._role_pending = self._ident is not None and self._ident.role_sent
        self._their_head: bytes | None = None

    def _frames(self, block: bytes) -> bytes:
        if block.find(b"\n\n") == len(block) - 2:
            return self._event(block[:-2])  # one event, the usual read
        return b"".join(self._event(event) for event in block.split(b"\n\n") if event)

    def _event(self, event: bytes) -> bytes:
        ident, theirs = self._ident, self._their_head
        if (
            theirs
            and ident is not None
            and ident.head
            and event.endswith(b'"finish_reason":null}]}')
            and event.startswith(theirs, 6)
        ):
            # A content chunk, the per-token case: only its head changes.
            return b"data: " + ident.head + event[6 + len(theirs) :] + b"\n\n"
        _, data = sse_event(event)
        if data == b"[DONE]":
            self.ended = True
            return event + b"\n\n"
        if not data.startswith(b"{"):
            return event + b"\n\n"
        if b'"choices":[]' in data:
            return self._usage_chunk(data)
        ident = self._ident
        if ident is None:
            return event + b"\n\n"  # nothing was relayed before: nothing to keep up with
        if self._role_pending:
            self._role_pending = False
            return self._first_delta(data)
        if self._their_head is None:
            self._their_head = chunk_head(data)
        theirs = self._their_head
        if theirs and ident.head and data.startswith(theirs):
            return b"data: " + ident.head + data[len(theirs) :] + b"\n\n"
        doc = loads(data)
        return _sse(self._own(doc)) if isinstance(doc, dict) else event + b"\n\n"

    def _own(self, doc: dict[str, Any]) -> dict[str, Any]:
        ident = self._ident
        if ident is not None:
            if "id" in doc:
                doc["id"] = ident.id
            if "created" in doc:
                doc["created"] = ident.created
        return doc

    def _first_delta(self, data: bytes) -> bytes:
        doc = loads(data)
        if not isinstance(doc, dict):
            return b"data: " + data + b"\n\n"
        choices = doc.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict) and "role" in delta:
                choice["delta"] = delta = {k: v for k, v in delta.items() if k != "role"}
                if not delta and choice.get("finish_reason") is None and len(choices) == 1:
                    return b""  # a role-only delta: the client has had it
        return _sse(self._own(doc))

    def _usage_chunk(self, data: bytes) -> bytes:
        if not self._usage:
            return b""
        doc = loads(data)
        if not isinstance(doc, dict):
            return b"data: " + data + b"\n\n"
        usage = doc.get("usage")
        if isinstance(usage, dict):
            prompt = self.prompt_tokens(_int(usage.get("prompt_tokens")))
            completion = self.partial.tokens + _int(usage.get("completion_tokens"))
            usage.update(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            )
        return _sse(self._own(doc))


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + go_json(doc) + b"\n\n"


_DELTA = b"event: content_block_delta\n"


class _Anthropic(Stitcher):
    _end = b"\n\n"

    def __init__(self, partial: Partial, *args: Any) -> None:
        super().__init__(partial, *args)
        message = partial.message
        self._started_message = message is not None
        self._client_open = message.open_block if message is not None else None
        self._next = message.blocks if message is not None else 0
        self._offset: int | None = None
        """Client index minus continuation index, fixed at the continuation's first block."""

    def _frames(self, block: bytes) -> bytes:
        if not self._offset and block.startswith(_DELTA) and block.count(b"\n\n") == 1:
            return block  # one delta in the client's block: the per-token case
        return b"".join(self._event(event) for event in block.split(b"\n\n") if event)

    def _event(self, event: bytes) -> bytes:
        name = event[7:].partition(b"\n")[0] if event.startswith(b"event: ") else b""
        if name == b"content_block_delta":
            return self._shifted(event)  # the per-token event: usually passed untouched
        if not name:  # no event line: the data's type names it
            doc = self._doc(event)
            name = str(doc.get("type", "")).encode() if doc is not None else b""
            if name == b"content_block_delta":
                return self._shifted(event)
        if name == b"ping":
            return b""
        if name == b"message_start":
            return b"" if self._started_message else event + b"\n\n"
        if name == b"content_block_start":
            return self._block_start(event)
        if name == b"content_block_stop":
            return self._block_stop(event)
        if name == b"message_delta":
            return self._message_delta(event)
        if name in (b"message_stop", b"error"):
            self.ended = True
        return event + b"\n\n"

    def _doc(self, event: bytes) -> dict[str, Any] | None:
        doc = loads(sse_event(event)[1])
        return doc if isinstance(doc, dict) else None

    def _shifted(self, event: bytes) -> bytes:
        if not self._offset:
            return event + b"\n\n"
        doc = self._doc(event)
        if doc is None or not isinstance(doc.get("index"), int):
            return event + b"\n\n"
        doc["index"] += self._offset
        return _event(doc)

    def _close_client_block(self) -> bytes:
        """End the block the client has open (the continuation went on elsewhere)."""
        index, self._client_open = self._client_open, None
        if index is None:
            return b""
        return _event({"type": "content_block_stop", "index": index})

    def _block_start(self, event: bytes) -> bytes:
        doc = self._doc(event)
        if doc is None or not isinstance(doc.get("index"), int):
            return event + b"\n\n"
        theirs: int = doc["index"]
        before = b""
        if self._offset is None:
            block = doc.get("content_block")
            kind = block.get("type") if isinstance(block, dict) else None
            if self._client_open is not None and kind == "text":
                self._offset = self._client_open - theirs
                return b""  # the client's text block goes on
            before = self._close_client_block()
            self._offset = self._next - theirs
        ours = theirs + self._offset
        self._next = max(self._next, ours + 1)
        if ours == theirs:
            return before + event + b"\n\n"
        doc["index"] = ours
        return before + _event(doc)

    def _block_stop(self, event: bytes) -> bytes:
        doc = self._doc(event)
        if doc is None or not isinstance(doc.get("index"), int):
            return event + b"\n\n"
        ours = doc["index"] + (self._offset or 0)
        if ours == self._client_open:
            self._client_open = None
        if not self._offset:
            return event + b"\n\n"
        doc["index"] = ours
        return _event(doc)

    def _message_delta(self, event: bytes) -> bytes:
        before = self._close_client_block()
        doc = self._doc(event)
        if doc is None:
            return before + event + b"\n\n"
        usage = doc.get("usage")
        if isinstance(usage, dict):
            usage["output_tokens"] = self.partial.tokens + _int(usage.get("output_tokens"))
            if "input_tokens" in usage:
                usage["input_tokens"] = self.prompt_tokens(_int(usage.get("input_tokens")))
        return before + _event(doc)


def _event(doc: dict[str, Any]) -> bytes:
    """One Anthropic event; its name is its ``type``, as Ollama writes it."""
    name = str(doc.get("type", "")).encode()
    return b"event: " + name + b"\ndata: " + go_json(doc) + b"\n\n"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
