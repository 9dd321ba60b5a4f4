"""Unloading a model from the whole fleet (pure).

Ollama unloads one server's copy when it gets an empty prompt with
``keep_alive: 0`` (docs/ollama.md §4.3).  Sent through the balancer, the same request
must reach every pod where the model is loaded or loading, or the model stays
warm on the others.  A model loaded nowhere is answered here, touching no pod.
Copies pinned forever (``keep_alive: -1``, as a ModelPool pins them) are kept
unless the balancer allows clients to unload them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ollama_wire.models import parse_time

from .fleetstate import FleetState
from .rankers import resident

__all__ = ["FOREVER_AFTER", "UnloadPlan", "plan_unload", "unload_answer"]

#: An ``expires_at`` further ahead than this is "forever" (Ollama's CLI uses 20 years).
FOREVER_AFTER = timedelta(days=365 * 20)


@dataclass(frozen=True, slots=True)
class UnloadPlan:
    targets: tuple[str, ...]  # pods to send the unload to
    refused: tuple[str, ...]  # pods whose copy is pinned forever and may not be unloaded


def plan_unload(fleet: FleetState, model: str, *, wall: datetime, allow_pinned: bool) -> UnloadPlan:
    """Where to send the unload of ``model``: every routable pod holding or loading it,
    counting the copies loads finished since the last poll (the balancer saw their first
    byte; ``/api/ps`` has not shown them yet)."""
    targets: list[str] = []
    pinned: list[str] = []
    occ = fleet.occupancy
    for s in fleet.routable:
        res = s.resident_model(model)
        if not resident(s, model, occ) and occ.loading(s.name, model) is None:
            continue
        expires = parse_time(res.expires_at) if res is not None else None
        if not allow_pinned and expires is not None and expires - wall > FOREVER_AFTER:
            pinned.append(s.name)
        else:
            targets.append(s.name)
    # Refuse only when nothing at all could be unloaded: unloading the unpinned copies is
    # what the client asked for, and the pinned ones are the operator's to keep.
    refused = tuple(pinned) if pinned and not targets else ()
    return UnloadPlan(tuple(targets), refused)


def unload_answer(path: str, model: str, wall: datetime) -> dict[str, Any]:
    """Ollama's answer to an unload, for a model that is loaded nowhere."""
    created = wall.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    if path == "/api/embed":
        return {"model": model, "embeddings": []}
    if path == "/api/chat":
        return {
            "model": model,
            "created_at": created,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "unload",
        }
    return {
        "model": model,
        "created_at": created,
        "response": "",
        "done": True,
        "done_reason": "unload",
    }
