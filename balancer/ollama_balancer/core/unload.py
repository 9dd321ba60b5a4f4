"""Unloading a model from the whole fleet (pure).

Ollama unloads one server's copy when it gets an empty prompt with
``keep_alive: 0`` (docs/ollama.md §4.3).  Sent through the balancer, the same request
must reach every pod where the model is loaded or loading, or the model stays
warm on the others.  A model loaded nowhere is answered here, touching no pod.
Copies pinned forever (``keep_alive: -1``, as a ModelPool pins them) are kept
unless the balancer allows clients to unload them: the answer says which stayed and
why (:func:`kept_header`), and a refusal reads well wherever a client prints the body
as it came (:func:`pinned_refusal`).

The plan reads the fleet view, which counts the balancer's own loads and unloads the
moment they happen (:mod:`.observed`), so an unload right after a load finds the fresh
copy instead of refusing or answering for a copy it never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ollama_wire.models import parse_time

from .fleetstate import FleetState
from .rankers import resident

__all__ = [
    "FOREVER_AFTER",
    "PINNED",
    "UnloadPlan",
    "kept_header",
    "pinned_refusal",
    "plan_unload",
    "unload_answer",
]

#: An ``expires_at`` further ahead than this is "forever" (Ollama's CLI uses 20 years).
FOREVER_AFTER = timedelta(days=365 * 20)
#: Why a copy stayed: pinned forever (``keep_alive: -1``, what a ModelPool does).
PINNED = "pinned"


@dataclass(frozen=True, slots=True)
class UnloadPlan:
    targets: tuple[str, ...]
    """Pods to send the unload to."""
    kept: tuple[str, ...] = ()
    """Pods whose copy is pinned forever and stays (the client may not unload it)."""

    @property
    def refused(self) -> tuple[str, ...]:
        """The pinned pods when nothing at all could be unloaded: the request is refused.
        Otherwise the unpinned copies go, which is what the client asked for, and the
        pinned ones are the operator's to keep (a partial unload, said in the answer)."""
        return self.kept if not self.targets else ()


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
    return UnloadPlan(tuple(targets), tuple(pinned))


def kept_header(kept: dict[str, str]) -> str:
    """The ``X-Ollama-Kept`` value: each pod whose copy stayed, and why (``pod=reason``)."""
    return ", ".join(f"{pod}={why}" for pod, why in kept.items())


def pinned_refusal(model: str, where: str) -> str:
    """Why an unload of a pinned-only model is refused, and what to do instead.

    Front ends print the error as it came, inside their own messages (Open WebUI shows a
    Python list of dicts holding it), so the text is plain ASCII with no quotes or
    backslashes: nothing in it is escaped on the way.
    """
    return (
        f"{model} stays loaded: it is pinned on {where} (kept loaded forever, as a "
        "ModelPool keeps it). Unload it by changing its ModelPool, or let clients unload "
        "pinned copies with the balancer setting allow_client_unload."
    )


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
