"""What an answer used: prompt and generated tokens, how they were counted, why it ended (pure).

Every API reports usage at the end of its answer, in its own words:

=====================  ==========================================  =====================
API                    where                                       keys
=====================  ==========================================  =====================
Ollama (``/api/*``)    the final ``"done": true`` line (streams),   ``prompt_eval_count``,
                       the body (non-streams, ``/api/embed``)       ``eval_count``
OpenAI (``/v1/chat``,  the body; a stream only when the client      ``prompt_tokens``,
``/v1/completions``,   asked (``stream_options.include_usage``: a   ``completion_tokens``
``/v1/embeddings``)    last chunk with ``"choices": []``)
OpenAI Responses       ``response.completed``'s ``usage``           ``input_tokens``,
                                                                    ``output_tokens``
Anthropic              the body; a stream's ``message_delta``       ``input_tokens``,
(``/v1/messages``)     (Ollama puts both counts there)              ``output_tokens``
=====================  ==========================================  =====================

So the figures are read from the end of what was relayed (the relay keeps its last two
chunks) without parsing the whole answer: the last occurrence of each key, as a JSON
key (a key inside generated text is escaped, ``\\"eval_count\\"``, and never matches).
That is :attr:`Counted.REPORTED`.

An answer that ends without figures — a broken or cancelled stream, an OpenAI stream
whose client did not ask for usage — still generated something: the relay counts the
chunks it passed on (NDJSON lines, SSE events; Ollama sends about one per generated
token, plus a few framing events such as ``[DONE]``), and the prompt is the balancer's
own estimate (:func:`~.tokens.estimate_tokens`, about four characters a token).  That is
:attr:`Counted.CHUNKS`.  The balancer never adds ``stream_options`` to a client's
request: the answer reaches the client exactly as Ollama sent it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "NO_USAGE",
    "SEARCHED",
    "Counted",
    "Usage",
    "chunk_separator",
    "operation_of",
    "usage_of",
]


class Counted(StrEnum):
    """How an answer's tokens were counted (a label of the usage metrics)."""

    REPORTED = "reported"
    """The answer's own figures (Ollama's final metrics, OpenAI's or Anthropic's usage)."""
    CHUNKS = "chunks"
    """No figures arrived: generated = chunks relayed, prompt = the balancer's estimate."""
    NONE = "none"
    """Nothing to count (a refusal, an error answer, an empty stream)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    generated: int
    counted: Counted
    finish_reason: str = ""


NO_USAGE = Usage(0, 0, Counted.NONE)

_PROMPT_KEYS = (b"prompt_eval_count", b"prompt_tokens", b"input_tokens")
_GENERATED_KEYS = (b"eval_count", b"completion_tokens", b"output_tokens")
# A JSON key: an unescaped quote before it (generated text has its quotes escaped).
_COUNT = re.compile(
    rb'(?<!\\)"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens|input_tokens|'
    rb'output_tokens)"\s*:\s*(\d{1,12})'
)
_REASON = re.compile(rb'(?<!\\)"(?:done_reason|finish_reason|stop_reason)"\s*:\s*"([^"\\]{1,64})"')


#: The figures sit at the very end of every answer (the final line, the last events, the
#: body's last key): only this much of the tail is searched, however long the answer.
SEARCHED = 4096


def usage_of(tail: bytes, chunks: int = 0, estimate: Callable[[], int] = lambda: 0) -> Usage:
    """The usage an answer ending in ``tail`` reported, else what ``chunks`` relayed say.

    ``chunks`` are the NDJSON lines or SSE events relayed (0 for a plain JSON body).
    Generated tokens reported make it :attr:`Counted.REPORTED` (an embedding's answer
    reports its prompt only: reported too, when no chunk was counted).  Otherwise a
    stream that relayed chunks is :attr:`Counted.CHUNKS`, its prompt the figure the stream
    gave early (Anthropic's ``message_start``) or ``estimate()``, called only then.
    """
    prompt = generated = None
    tail = tail[-SEARCHED:]
    for match in _COUNT.finditer(tail):
        key, value = match.group(1), int(match.group(2))
        if key in _PROMPT_KEYS:
            prompt = value
        elif key in _GENERATED_KEYS:
            generated = value
    reasons = _REASON.findall(tail)
    reason = reasons[-1].decode("utf-8", "replace") if reasons else ""
    if generated is not None or (prompt is not None and chunks == 0):
        return Usage(prompt or 0, generated or 0, Counted.REPORTED, reason)
    if chunks > 0:
        return Usage(prompt if prompt is not None else estimate(), chunks, Counted.CHUNKS, reason)
    return Usage(0, 0, Counted.NONE, reason)


def chunk_separator(content_type: str) -> bytes:
    """What ends one chunk of a stream of ``content_type`` (b"": not a stream)."""
    if content_type == "application/x-ndjson":
        return b"\n"
    if content_type == "text/event-stream":
        return b"\n\n"
    return b""


#: gen_ai.operation.name of each inference path (OpenTelemetry GenAI conventions).
_OPERATIONS = {
    "/api/generate": "text_completion",
    "/api/chat": "chat",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
}


def operation_of(path: str) -> str:
    """The GenAI operation a path performs ("" for one that generates nothing)."""
    return _OPERATIONS.get(path, "")
