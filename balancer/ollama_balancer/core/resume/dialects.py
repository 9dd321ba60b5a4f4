"""The four wire dialects a generation can be resumed in, and why one cannot be (pure).

A resumable stream is one of Ollama's native NDJSON streams (``/api/chat``,
``/api/generate``) or one of the two SSE dialects Ollama converts to chat
(``/v1/chat/completions``, ``/v1/messages``).  Every other inference path is out: the
balancer has no way to hand the model its own partial answer back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Dialect", "NotResumable", "Obstacle", "Verdict", "dialect_of"]


class Dialect(StrEnum):
    """How a stream is framed and what its frames look like."""

    CHAT = "chat"  # /api/chat: NDJSON, message.content
    GENERATE = "generate"  # /api/generate: NDJSON, response
    OPENAI = "openai"  # /v1/chat/completions: SSE data frames, [DONE]
    ANTHROPIC = "anthropic"  # /v1/messages: SSE event + data frames, message_stop

    @property
    def sse(self) -> bool:
        return self in (Dialect.OPENAI, Dialect.ANTHROPIC)

    @property
    def native(self) -> bool:
        return not self.sse


_PATHS = {
    "/api/chat": Dialect.CHAT,
    "/api/generate": Dialect.GENERATE,
    "/v1/chat/completions": Dialect.OPENAI,
    "/v1/messages": Dialect.ANTHROPIC,
}


def dialect_of(path: str) -> Dialect | None:
    """The dialect of an inference path (None: a path whose answers cannot be resumed)."""
    return _PATHS.get(path)


class Obstacle(StrEnum):
    """Why a request, or what was relayed of its answer, cannot be continued (the values
    are fit for a metric label or a log field)."""

    API = "api"
    """The path has no way to continue a partial answer (embeddings, /v1/responses…)."""
    TEMPLATE = "template"
    """The prompt goes through a template the balancer cannot see (non-raw generate,
    /v1/completions, a ``suffix``): nowhere to put the partial answer; or the model's chat
    template closes a trailing assistant turn instead of continuing it."""
    FORMAT = "format"
    """A JSON ``format`` or schema: its grammar constrains the generated tokens from their
    first, so a continuation would start a second document after the partial one."""
    THINKING = "thinking"
    """The model thinks (asked to, or by default): templates reshape or drop a trailing
    assistant message's thinking, so the continuation would not see its own reasoning."""
    TOOL_CALL = "tool_call"
    """A tool call was emitted: what follows a call cannot be continued as plain text."""
    CHOICES = "choices"
    """More than one choice (OpenAI ``n`` > 1)."""
    BODY = "body"
    """The body has no shape the balancer can extend (Ollama refuses it anyway)."""
    ENDED = "ended"
    """The stream already ended (done line, finish reason, ``[DONE]``, ``message_stop``,
    an error): nothing is left to resume."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request can be resumed: true when nothing stands in the way."""

    obstacle: Obstacle | None = None

    def __bool__(self) -> bool:
        return self.obstacle is None


class NotResumable(Exception):
    """A continuation was asked of a request or partial answer that cannot have one."""

    def __init__(self, obstacle: Obstacle) -> None:
        super().__init__(f"cannot resume: {obstacle.value}")
        self.obstacle = obstacle
