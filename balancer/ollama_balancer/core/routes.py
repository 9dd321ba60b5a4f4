"""The route table: for every path the balancer serves, what kind of request it is (pure).

One table answers every question the request pipeline asks of a path: is it
inference (proxied to one pod by model), a listing answered from the snapshot,
an admin call (refused or fanned out), or an operations endpoint; does it need an
API key; does its body name a model (read, parsed and authorised once); does it
count against a key's quotas; does it take conversation affinity.  ``app.py``
registers handlers from it, ``pipeline.py`` reads it per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ROUTES", "Kind", "RouteSpec", "spec_for"]


class Kind(StrEnum):
    INFERENCE = "inference"  # proxied to one pod chosen by model
    LISTING = "listing"  # answered from the fleet snapshot
    ADMIN = "admin"  # model storage: refused, or fanned out to every pod
    OPS = "ops"  # health, metrics, fleet view: never behind keys


@dataclass(frozen=True, slots=True)
class RouteSpec:
    path: str  # aiohttp pattern
    methods: tuple[str, ...]
    kind: Kind
    model_body: bool = False  # the JSON body names a model: parsed and authorised once
    quota: bool = False  # counts against the key's concurrency, RPM and TPM
    affinity: bool = False  # conversation affinity may pick the pod

    @property
    def needs_key(self) -> bool:
        return self.kind is not Kind.OPS


def _inference(path: str, *, affinity: bool = False, quota: bool = True) -> RouteSpec:
    return RouteSpec(path, ("POST",), Kind.INFERENCE, True, quota, affinity)


ROUTES: tuple[RouteSpec, ...] = (
    _inference("/api/generate", affinity=True),
    _inference("/api/chat", affinity=True),
    _inference("/api/embed"),
    _inference("/api/embeddings"),
    _inference("/api/show", quota=False),  # metadata, not generation: no slot, no quota
    _inference("/v1/chat/completions", affinity=True),
    _inference("/v1/completions", affinity=True),
    _inference("/v1/embeddings"),
    _inference("/v1/responses", affinity=True),
    _inference("/v1/messages", affinity=True),  # Anthropic's Messages API (docs/anthropic.md)
    RouteSpec("/", ("GET", "HEAD"), Kind.OPS),  # Ollama's "is it up" answer
    RouteSpec("/api/version", ("GET",), Kind.LISTING),
    RouteSpec("/api/tags", ("GET",), Kind.LISTING),
    RouteSpec("/api/ps", ("GET",), Kind.LISTING),
    RouteSpec("/v1/models", ("GET",), Kind.LISTING),
    RouteSpec("/v1/models/{model}", ("GET",), Kind.LISTING),
    RouteSpec("/api/pull", ("POST",), Kind.ADMIN, model_body=True),
    RouteSpec("/api/delete", ("DELETE",), Kind.ADMIN, model_body=True),
    RouteSpec("/api/create", ("POST",), Kind.ADMIN, model_body=True),
    RouteSpec("/api/copy", ("POST",), Kind.ADMIN),
    RouteSpec("/api/push", ("POST",), Kind.ADMIN),
    RouteSpec("/api/blobs/{digest}", ("HEAD", "POST"), Kind.ADMIN),
    RouteSpec("/healthz", ("GET",), Kind.OPS),
    RouteSpec("/readyz", ("GET",), Kind.OPS),
    RouteSpec("/metrics", ("GET",), Kind.OPS),
    RouteSpec("/-/fleet", ("GET",), Kind.OPS),
    RouteSpec("/-/dashboard", ("GET",), Kind.OPS),
)

_EXACT = {r.path: r for r in ROUTES if "{" not in r.path}
_PREFIXED = tuple((r.path.partition("{")[0], r) for r in ROUTES if "{" in r.path)


def spec_for(path: str) -> RouteSpec | None:
    """The table's entry for a request path (None: not a path the balancer serves)."""
    found = _EXACT.get(path)
    if found is not None:
        return found
    for prefix, spec in _PREFIXED:
        rest = path[len(prefix) :]
        if path.startswith(prefix) and rest and "/" not in rest:
            return spec
    return None
