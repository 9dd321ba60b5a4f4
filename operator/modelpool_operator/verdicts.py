"""Which failures are verdicts, and what a person should do about them (pure).

A verdict is an answer that asking again cannot change: the registry has no such
model or tag, Ollama refuses the name, the registry will not serve the model to
the pods.  The pool stops retrying it until its spec changes (a new
``metadata.generation``) and reports it with a reason and a message that say
what to fix.  Everything else (a pod that does not answer, a 5xx, a torn
stream) is transient and retried with backoff.
"""

from __future__ import annotations

from .spec import explain_invalid_name
from .state import ActionKind, Problem

__all__ = ["MODEL_NOT_FOUND", "blocked_problem", "verdict"]

MODEL_NOT_FOUND = "ModelNotFound"
INVALID_NAME = "InvalidModelName"
UNAUTHORIZED = "Unauthorized"


def verdict(kind: ActionKind, status: int | None, message: str) -> str | None:
    """The reason if Ollama's answer to ``kind`` is final, else None.

    Pull errors arrive in-stream (``pull model manifest: file does not exist``,
    ``pull model manifest: unauthorized: access denied``) or as a 400 ``invalid
    model name`` before the stream; docs/ollama.md §2.4.  ``status`` is None for
    failures without an HTTP error status (an in-stream error line).
    """
    text = message.lower()
    if "invalid model name" in text or (status == 400 and " is invalid" in text):
        return INVALID_NAME
    if kind is not ActionKind.PULL:
        # A load's 404 means "not pulled (yet)": the next pass pulls it.
        return None
    if "file does not exist" in text or "manifest unknown" in text or "model not found" in text:
        return MODEL_NOT_FOUND
    if "unauthorized" in text or "access denied" in text or status in (401, 403):
        return UNAUTHORIZED
    return None


def blocked_problem(reason: str, name: str, key: str, detail: str) -> Problem:
    """The Degraded problem for a verdict on model ``name``, with what to do."""
    if reason == MODEL_NOT_FOUND:
        text = (
            f"{name}: the registry has no such model or tag ({detail}); check the name and "
            "tag in spec.models (not retried until the spec changes)"
        )
    elif reason == UNAUTHORIZED:
        text = (
            f"{name}: the registry refuses to serve it to the pods ({detail}); the model is "
            "private: give the Ollama pods a key that may pull it, or choose a public model "
            "(not retried until the spec changes)"
        )
    elif reason == INVALID_NAME:
        text = (
            f"{name}: Ollama refuses the name ({detail}): {explain_invalid_name(name)}; "
            "fix it in spec.models (not retried until the spec changes)"
        )
    else:
        text = f"{name}: {detail} (not retried until the spec changes)"
    return Problem(reason, text, key)
