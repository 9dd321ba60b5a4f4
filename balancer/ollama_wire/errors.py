"""Error bodies in the shapes clients expect (pure).

* ``/api/*``: ``{"error": "..."}`` (Ollama's native shape);
* ``/v1/*``: ``{"error": {"message", "type", "param", "code"}}`` with the type
  picked from the status exactly as Ollama's OpenAI middleware does.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MSG_SERVER_BUSY",
    "error_body_for",
    "is_openai_path",
    "ollama_error_body",
    "openai_error_body",
    "openai_error_type",
]

#: Ollama's queue-full message (two spaces after "again." are part of it).
MSG_SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def openai_error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


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


def error_body_for(path: str, status: int, message: str) -> dict[str, Any]:
    """The error body a client of ``path`` expects."""
    if is_openai_path(path):
        return openai_error_body(status, message)
    return ollama_error_body(message)
