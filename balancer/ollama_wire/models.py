"""``/api/tags`` and ``/api/ps`` records, parsed from Ollama's JSON (pure).

One type per endpoint: the balancer's fleet snapshot, its views and the operator's
observation all read these.  Entries whose name Ollama itself would reject are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from .names import InvalidModelName, canonical

__all__ = [
    "InstalledModel",
    "ResidentModel",
    "parse_installed",
    "parse_resident",
    "parse_time",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One ``/api/tags`` entry."""

    key: str  # canonical name
    name: str  # DisplayShortest as the backend printed it
    size: int
    digest: str
    modified_at: str
    embedding: bool
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """One ``/api/ps`` entry."""

    key: str
    name: str
    size: int
    size_vram: int
    digest: str
    expires_at: str
    context_length: int
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)


def _key(name: object) -> str | None:
    try:
        return canonical(str(name))
    except InvalidModelName:
        return None


def parse_installed(models: Iterable[Mapping[str, Any]]) -> tuple[InstalledModel, ...]:
    out = []
    for m in models:
        key = _key(m.get("model") or m.get("name"))
        if key is None:
            continue
        caps = m.get("capabilities") or []
        details = m.get("details") or {}
        embedding = "embedding" in caps or (
            not caps and "bert" in str(details.get("family", "")).lower()
        )
        out.append(
            InstalledModel(
                key=key,
                name=str(m.get("name") or m.get("model")),
                size=int(m.get("size") or 0),
                digest=str(m.get("digest") or ""),
                modified_at=str(m.get("modified_at") or ""),
                embedding=bool(embedding),
                raw=MappingProxyType(dict(m)),
            )
        )
    return tuple(out)


def parse_resident(models: Iterable[Mapping[str, Any]]) -> tuple[ResidentModel, ...]:
    out = []
    for m in models:
        key = _key(m.get("model") or m.get("name"))
        if key is None:
            continue
        out.append(
            ResidentModel(
                key=key,
                name=str(m.get("name") or m.get("model")),
                size=int(m.get("size") or 0),
                size_vram=int(m.get("size_vram") or 0),
                digest=str(m.get("digest") or ""),
                expires_at=str(m.get("expires_at") or ""),
                context_length=int(m.get("context_length") or 0),
                raw=MappingProxyType(dict(m)),
            )
        )
    return tuple(out)


def parse_time(text: str) -> datetime | None:
    """RFC 3339 with nanoseconds (Go) → datetime, tolerant of 9 fractional digits."""
    if not text:
        return None
    t = text.replace("Z", "+00:00")
    if "." in t:
        head, _, rest = t.partition(".")
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        t = f"{head}.{digits[:6].ljust(6, '0')}{rest[i:]}"
    try:
        return datetime.fromisoformat(t)
    except ValueError:
        return None
