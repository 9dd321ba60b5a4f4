"""One-fleet listings answered like a single Ollama server, from the snapshot (pure).

``/api/tags`` is the union of installed models, ``/api/ps`` everything resident
anywhere (one entry per model: the copy that stays longest), ``/v1/models``
the union in OpenAI's shape with ``data`` never null (Ollama sends null for an
empty list, which breaks clients that iterate it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ollama_wire.models import InstalledModel, ResidentModel, parse_time
from ollama_wire.names import InvalidModelName, parse

from .fleet import BackendState

__all__ = ["api_ps", "api_tags", "fleet_version", "v1_model", "v1_models"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when(text: str) -> datetime:
    t = parse_time(text)
    if t is None:
        return _EPOCH
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _union(states: Iterable[BackendState], kind: str, when: str) -> list[dict[str, Any]]:
    """One entry per model over every pod's ``kind`` (installed | resident), the one latest
    by its ``when`` time field kept, sorted newest first like Ollama sorts its own lists."""
    best: dict[str, dict[str, Any]] = {}
    for s in states:
        models: Mapping[str, InstalledModel | ResidentModel] = getattr(s, kind)
        for key, m in models.items():
            doc = dict(m.raw) or {"name": m.name, "model": m.name}
            cur = best.get(key)
            if cur is None or _when(str(doc.get(when, ""))) > _when(str(cur.get(when, ""))):
                best[key] = doc
    return sorted(best.values(), key=lambda d: _when(str(d.get(when, ""))), reverse=True)


def api_tags(states: Iterable[BackendState]) -> dict[str, Any]:
    return {"models": _union(states, "installed", "modified_at")}


def api_ps(states: Iterable[BackendState]) -> dict[str, Any]:
    """Everything resident anywhere; per model the copy that stays longest."""
    return {"models": _union(states, "resident", "expires_at")}


def _v1_entry(model: dict[str, Any], ident: str | None = None) -> dict[str, Any]:
    name = str(model.get("model") or model.get("name"))
    try:
        owner = parse(name).namespace
    except InvalidModelName:
        owner = "library"
    return {
        "id": ident if ident is not None else name,
        "object": "model",
        "created": int(_when(str(model.get("modified_at", ""))).timestamp()),
        "owned_by": owner,
    }


def v1_models(states: Iterable[BackendState]) -> dict[str, Any]:
    return {"object": "list", "data": [_v1_entry(m) for m in api_tags(states)["models"]]}


def v1_model(states: Iterable[BackendState], key: str, ident: str) -> dict[str, Any] | None:
    for s in states:
        m = s.installed.get(key)
        if m is not None:
            return _v1_entry(dict(m.raw) or {"model": m.name}, ident)
    return None


def fleet_version(states: Iterable[BackendState], fallback: str) -> str:
    """The oldest version in the fleet: what every backend is sure to support."""
    versions = [s.version for s in states if s.version]
    if not versions:
        return fallback

    def key(v: str) -> tuple[int, ...]:
        out = []
        for part in v.split("-")[0].split("."):
            out.append(int(part) if part.isdigit() else 0)
        return tuple(out)

    return min(versions, key=key)
