"""Immutable values shared by observe, plan, execute and status (pure).

An :class:`Observation` is what the operator saw on the selected pods in one
pass; :class:`Owned` entries are the pool's ownership ledger, so that prune only
ever removes what this pool put there and two pools selecting the same pods can
see each other's claims.  The ledger is kept in the pool's annotation
``ollamafleet.io/owned`` (:data:`LEDGER_ANNOTATION`), where a backup restore
that drops ``status`` (as Velero and GitOps re-creates do) cannot lose it, and
mirrored in ``status.owned`` for people; :func:`ledger_of` reads the annotation
first and falls back to the status of pools written before it existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

from ollama_wire.models import InstalledModel

__all__ = [
    "LEDGER_ANNOTATION",
    "Action",
    "ActionKind",
    "Activity",
    "Observation",
    "Owned",
    "PodState",
    "Priority",
    "Problem",
    "Resident",
    "ledger_from_annotation",
    "ledger_from_status",
    "ledger_of",
    "ledger_to_annotation",
    "ledger_to_status",
    "merge_claims",
]


@dataclass(frozen=True, slots=True)
class Resident:
    """A model in a pod's memory (``/api/ps``)."""

    name: str
    size: int
    #: expires_at lies decades ahead: someone loaded it with a negative keep_alive
    pinned: bool = False
    context_length: int = 0


@dataclass(frozen=True, slots=True)
class PodState:
    """One selected, Ready pod and what its Ollama server reported."""

    name: str
    url: str
    #: Kubernetes node (``spec.nodeName``); replicas are spread across these
    node: str = ""
    #: from the ``ollamafleet.io/vram-bytes`` annotation; None = use the pool default
    vram_bytes: int | None = None
    installed: Mapping[str, InstalledModel] = field(default_factory=dict)
    resident: Mapping[str, Resident] = field(default_factory=dict)
    #: set when the pod is Ready in Kubernetes but its Ollama API did not answer
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None

    @property
    def spread_key(self) -> str:
        # An unscheduled pod (no nodeName) counts as its own failure domain.
        return self.node or f"pod/{self.name}"


@dataclass(frozen=True, slots=True)
class Observation:
    """The selected pods at one instant."""

    #: Ready pods with an IP, sorted by name (available or not answering)
    pods: tuple[PodState, ...] = ()
    #: every selected pod that exists, Ready or not; claims on others are forgotten
    existing: frozenset[str] = frozenset()

    def pod(self, name: str) -> PodState | None:
        for p in self.pods:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True, slots=True, order=True)
class Owned:
    """Ledger entry: this pool pinned (``loaded``) and/or pulled ``model`` on ``pod``.

    ``pulled`` is only set when the pool itself pulled the model, so prune
    never deletes a model that was on the disk before the pool came along.
    """

    pod: str
    model: str  # canonical key
    name: str  # spelling used on the wire, reused for unload/delete
    loaded: bool = False
    pulled: bool = False
    embedding: bool = False

    @property
    def empty(self) -> bool:
        return not self.loaded and not self.pulled


class ActionKind(StrEnum):
    PULL = "pull"
    LOAD = "load"
    UNLOAD = "unload"
    DELETE = "delete"


class Priority(IntEnum):
    """Order of work on one pod (lower first).

    Freeing memory and disk is quick and makes room for what follows; a replica
    that went missing (its pod is gone, or Ollama evicted it) is replaced before
    anything else; then pins that drifted are repaired, then new warm replicas,
    and only then pulls of models wanted on disk alone.  A pull that a load waits
    for carries that load's priority.
    """

    FREE = 0
    REPLACE = 1
    REPAIR = 2
    LOAD = 3
    DISK = 5


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    pod: str
    url: str
    model: str  # canonical key
    name: str  # wire name
    reason: str
    keep_alive: float | int | None = None
    options: tuple[tuple[str, Any], ...] = ()
    embedding: bool = False
    priority: Priority = Priority.LOAD
    #: a pull of a model of unknown size: give up once Ollama's progress says the
    #: model is bigger than this (the room the plan had for it)
    max_bytes: int | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.name} on {self.pod} ({self.reason})"

    @property
    def slot(self) -> tuple[str, str, str]:
        """What the action acts on: (kind, pod, model).  One at a time per pool."""
        return (self.kind.value, self.pod, self.model)


@dataclass(frozen=True, slots=True)
class Activity:
    """An action handed to the pod queues and not finished yet (for status)."""

    action: Action
    running: bool = False
    #: pull progress in bytes, as Ollama reports it (0 = not known yet)
    completed: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the pool cannot be Ready; becomes the Degraded condition."""

    reason: str  # CamelCase, Kubernetes condition style
    message: str
    model: str | None = None


def merge_claims(ledgers: Iterable[Iterable[Owned]]) -> dict[tuple[str, str], Owned]:
    """Union of other pools' ledgers, keyed by (pod, model key)."""
    out: dict[tuple[str, str], Owned] = {}
    for ledger in ledgers:
        for o in ledger:
            k = (o.pod, o.model)
            prev = out.get(k)
            out[k] = (
                o
                if prev is None
                else replace(prev, loaded=prev.loaded or o.loaded, pulled=prev.pulled or o.pulled)
            )
    return out


def ledger_to_status(ledger: Iterable[Owned]) -> list[dict[str, Any]]:
    return [
        {
            "pod": o.pod,
            "model": o.model,
            "name": o.name,
            "loaded": o.loaded,
            "pulled": o.pulled,
            "embedding": o.embedding,
        }
        for o in sorted(ledger)
        if not o.empty
    ]


def ledger_from_status(status: Mapping[str, Any] | None) -> tuple[Owned, ...]:
    """Read ``status.owned`` back, skipping malformed entries (status is user-writable)."""
    out: list[Owned] = []
    for item in (status or {}).get("owned") or ():
        if not isinstance(item, Mapping):
            continue
        pod, model, name = item.get("pod"), item.get("model"), item.get("name")
        if not (isinstance(pod, str) and isinstance(model, str) and isinstance(name, str)):
            continue
        o = Owned(
            pod=pod,
            model=model,
            name=name,
            loaded=bool(item.get("loaded")),
            pulled=bool(item.get("pulled")),
            embedding=bool(item.get("embedding")),
        )
        if not o.empty:
            out.append(o)
    return tuple(sorted(out))


#: Metadata annotation holding the pool's ledger (see the module docstring).
LEDGER_ANNOTATION = "ollamafleet.io/owned"

_FLAGS = (("L", "loaded"), ("P", "pulled"), ("E", "embedding"))


def ledger_to_annotation(ledger: Iterable[Owned]) -> str:
    """Compact JSON: ``[[pod, model key, wire name, "LPE"], ...]`` sorted (stable text)."""
    rows = [
        [o.pod, o.model, o.name, "".join(c for c, f in _FLAGS if getattr(o, f))]
        for o in sorted(ledger)
        if not o.empty
    ]
    return json.dumps(rows, separators=(",", ":"))


def ledger_from_annotation(text: str | None) -> tuple[Owned, ...] | None:
    """The ledger from the annotation; None when it is absent or not ours to read."""
    if not isinstance(text, str):
        return None
    try:
        rows = json.loads(text)
    except ValueError:
        return None
    if not isinstance(rows, list):
        return None
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4 and all(isinstance(x, str) for x in row)):
            continue
        pod, model, name, flags = row
        o = Owned(pod, model, name, **{f: c in flags for c, f in _FLAGS})
        if not o.empty:
            out.append(o)
    return tuple(sorted(out))


def ledger_of(body: Mapping[str, Any]) -> tuple[Owned, ...]:
    """A pool's ledger: the annotation, else (pools from before it) ``status.owned``."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    found = ledger_from_annotation(annotations.get(LEDGER_ANNOTATION))
    return found if found is not None else ledger_from_status(body.get("status"))
