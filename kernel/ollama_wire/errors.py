"""Error bodies in the shapes clients expect (pure).

* ``/api/*``: ``{"error": "..."}`` (Ollama's native shape);
* ``/v1/messages``: Anthropic's ``{"type": "error", "error": {"type", "message"},
  "request_id"}``, the type picked from the status as Ollama's Anthropic middleware
  does (docs/anthropic.md §6.2);
* the other ``/v1/*`` paths: ``{"error": {"message", "type", "param", "code"}}`` with
  the type picked from the status exactly as Ollama's OpenAI middleware does.
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = [
    "ANTHROPIC_PATH",
    "MSG_SERVER_BUSY",
    "anthropic_error_body",
    "anthropic_error_type",
    "anthropic_request_id",
    "error_body_for",
    "is_anthropic_path",
    "is_openai_path",
    "ollama_error_body",
    "openai_error_body",
    "openai_error_type",
]

#: Ollama's queue-full message (two spaces after "again." are part of it).
MSG_SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"

#: The one path Ollama serves Anthropic's Messages API on (``count_tokens`` is not served).
ANTHROPIC_PATH = "/v1/messages"

#: Status → Anthropic ``error.type`` (``anthropic/anthropic.go:37-62``); others are ``api_error``.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    """The Anthropic route; the query string is not part of ``path`` (gin ignores it)."""
    return path == ANTHROPIC_PATH


def is_openai_path(path: str) -> bool:
    """An OpenAI-shaped ``/v1`` path (``/v1/messages`` is Anthropic's, not OpenAI's)."""
    return (path == "/v1" or path.startswith("/v1/")) and not is_anthropic_path(path)


def openai_error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error")


def anthropic_request_id() -> str:
    """``req_`` + 24 lowercase hex characters: random, referred to by nothing else."""
    return "req_" + secrets.token_hex(12)


def ollama_error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": openai_error_type(status),
            "param": None,
            "code": None,
        }
    }


def anthropic_error_body(
    status: int, message: str, request_id: str | None = None
) -> dict[str, Any]:
    """Ollama's Anthropic error body; ``request_id`` is made up when not given."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": request_id or anthropic_request_id(),
    }


def error_body_for(path: str, status: int, message: str) -> dict[str, Any]:
    """The error body a client of ``path`` expects."""
    if is_anthropic_path(path):
        return anthropic_error_body(status, message)
    if is_openai_path(path):
        return openai_error_body(status, message)
    return ollama_error_body(message)
