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


def _key(name: str) -> str | None:
    try:
        return canonical(name)
    except InvalidModelName:
        return None


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One ``/api/tags`` entry: a model on a server's disk."""

    name: str
    """The name as the server printed it (Ollama's shortest display form)."""
    size: int
    digest: str = ""
    modified_at: str = ""
    capabilities: frozenset[str] = frozenset()
    """``completion``, ``embedding``, ``vision``, ``tools``, ``thinking`` (Ollama ≥ 0.6.4;
    empty from older servers)."""
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    """The entry as received, passed through to clients by the merged listings."""
    key: str = field(init=False)
    """The canonical name (``registry.ollama.ai/library/x:latest``) every lookup uses."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", _key(self.name) or self.name.lower())


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """One ``/api/ps`` entry: a model in a server's memory."""

    name: str
    size: int
    size_vram: int = 0
    digest: str = ""
    expires_at: str = ""
    context_length: int = 0
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    key: str = field(init=False)
    """The canonical name, as :attr:`InstalledModel.key`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", _key(self.name) or self.name.lower())


def _name(m: Mapping[str, Any]) -> str | None:
    """The entry's name, if Ollama itself would accept it (``name``, else ``model``)."""
    name = str(m.get("name") or m.get("model") or "")
    return name if _key(name) is not None else None


def parse_installed(models: Iterable[Mapping[str, Any]]) -> tuple[InstalledModel, ...]:
    out = []
    for m in models:
        name = _name(m)
        if name is None:
            continue
        out.append(
            InstalledModel(
                name=name,
                size=int(m.get("size") or 0),
                digest=str(m.get("digest") or ""),
                modified_at=str(m.get("modified_at") or ""),
                capabilities=frozenset(str(c) for c in m.get("capabilities") or ()),
                raw=MappingProxyType(dict(m)),
            )
        )
    return tuple(out)


def parse_resident(models: Iterable[Mapping[str, Any]]) -> tuple[ResidentModel, ...]:
    out = []
    for m in models:
        name = _name(m)
        if name is None:
            continue
        out.append(
            ResidentModel(
                name=name,
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
