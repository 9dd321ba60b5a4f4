"""A request's class: critical, standard or batch, from its key and its ``X-Priority`` (pure)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BadPriority", "Priority", "parse_priority", "request_priority"]


class Priority(StrEnum):
    """A request's class; lower :attr:`rank` goes first."""

    CRITICAL = "critical"
    STANDARD = "standard"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.BATCH: 2}


class BadPriority(ValueError):
    """An ``X-Priority`` value or a keys-file ``priority`` that names no class."""


def parse_priority(text: str) -> Priority:
    try:
        return Priority(text.strip().lower())
    except ValueError:
        allowed = ", ".join(p.value for p in Priority)
        raise BadPriority(f"unknown priority {text[:40]!r} (one of {allowed})") from None


def request_priority(key_priority: Priority | None, header: str | None) -> Priority:
    """The class a request runs in: its key's (standard without one), lowered by ``X-Priority``.

    A header may lower the class but never raise it: a ``standard`` key sending
    ``X-Priority: critical`` stays ``standard``.  An unknown header value raises
    :class:`BadPriority` (the caller answers 400 in the client's shape).
    """
    base = key_priority or Priority.STANDARD
    if header is None or not header.strip():
        return base
    asked = parse_priority(header)
    return asked if asked.rank > base.rank else base
