"""What the balancer itself caused or saw, counted in the fleet view at once (pure).

The snapshot is what each pod said at its last poll.  Between two polls the balancer
often knows better, because it did the thing or read the answer:

* a model **loaded** by a request it sent to a pod that did not have it resident (the
  pod's first byte came): resident now, with the request's ``keep_alive`` (Ollama's
  default, 5 minutes, when it gave none);
* a copy **unloaded** by an unload it sent (the pod answered it): gone now, not at the
  next ``/api/ps``;
* a model **pulled** onto a pod (the pull's last line was ``success``): installed now;
* a model **deleted** from a pod by the admin fan-out (the pod answered 200): gone now
  (a runner that lives on answers nothing: Ollama looks the model up on disk first);
* a model **missing** on a pod (an inference request was answered 404 "model not found"):
  not installed there, so the next request does not try it first again.

A load the balancer started as a cold load is also the occupancy's ``loaded``
(fleet-wide with shared state, so the other replicas count it too).

Each fact is an :class:`Observation` applied to the snapshot by :func:`observe`.  A poll
that *started* before the fact cannot know it, so the tracker keeps the facts not yet
covered by a newer poll (:func:`still_news`) and applies them again on top of each poll.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from ollama_wire.models import InstalledModel, ResidentModel

from .fleet import BackendState, FleetSnapshot

__all__ = ["Observation", "Seen", "expiry", "observe", "still_news"]

#: A fact no poll confirmed within this long is dropped (the pod may be down for good).
NEWS_SECONDS = 300.0


class Seen(StrEnum):
    """What happened to a model on a pod, as the balancer saw it."""

    LOADED = "loaded"
    UNLOADED = "unloaded"
    PULLED = "pulled"
    DELETED = "deleted"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Observation:
    """``model`` (its canonical key) on ``pod``: what was seen, and when (monotonic)."""

    seen: Seen
    pod: str
    model: str
    at: float
    name: str = ""
    """The model's name as the client gave it (a pulled model's listing entry)."""
    expires_at: str = ""
    """A loaded copy's expiry (RFC 3339), as ``/api/ps`` would say it."""


def observe(snapshot: FleetSnapshot, fact: Observation) -> FleetSnapshot:
    """The snapshot with ``fact`` counted; unknown pods are left alone."""
    states = []
    changed = False
    for state in snapshot.backends:
        if state.name == fact.pod:
            new = _apply(state, fact, snapshot)
            changed = changed or new is not state
            states.append(new)
        else:
            states.append(state)
    if not changed:
        return snapshot
    return FleetSnapshot(backends=tuple(states), taken_at=snapshot.taken_at)


def _apply(state: BackendState, fact: Observation, snapshot: FleetSnapshot) -> BackendState:
    key = fact.model
    resident = dict(state.resident)
    installed = dict(state.installed)
    # A deleted model's runner may live on until it expires, but it answers nothing: Ollama
    # looks the model up on disk first (404), so for routing it is gone too.
    gone = (Seen.UNLOADED, Seen.DELETED, Seen.MISSING)
    runner = state.resident_model(key) if fact.seen in gone else None
    if runner is not None:
        resident.pop(runner.key, None)
    if fact.seen in (Seen.DELETED, Seen.MISSING):
        installed.pop(key, None)
    if fact.seen is Seen.PULLED and key not in installed:
        installed[key] = _pulled(key, fact.name, snapshot)
    if fact.seen is Seen.LOADED and state.resident_model(key) is None:
        on_disk = installed.get(key) or _pulled(key, fact.name, snapshot)
        resident[key] = ResidentModel(
            on_disk.name, on_disk.size, on_disk.size, on_disk.digest, fact.expires_at
        )
    if resident == state.resident and installed == state.installed:
        return state
    return replace(
        state, resident=MappingProxyType(resident), installed=MappingProxyType(installed)
    )


def _pulled(key: str, name: str, snapshot: FleetSnapshot) -> InstalledModel:
    """A listing entry for a model just pulled: another pod's copy of it (same blobs,
    same size), else a bare one (its size and digest come with the next poll)."""
    for s in snapshot.backends:
        other = s.installed.get(key)
        if other is not None:
            return other
    return InstalledModel(name=name or key, size=0)


#: Ollama's ``keep_alive`` when a request gives none (its ``OLLAMA_KEEP_ALIVE`` default).
DEFAULT_KEEP_ALIVE = 300.0
#: How far ahead Ollama writes "forever" (its ``expires_at`` for ``keep_alive: -1``).
FOREVER = timedelta(days=365 * 292)


def expiry(keep_alive: float | None, wall: datetime) -> str:
    """The ``expires_at`` of a copy a request loaded with ``keep_alive`` seconds (None:
    the default, infinite: forever) at ``wall``."""
    seconds = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
    ahead = FOREVER if seconds == float("inf") else timedelta(seconds=seconds)
    return (wall + ahead).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def still_news(
    facts: list[Observation], pod: str, poll_started: float, now: float
) -> list[Observation]:
    """The facts a poll of ``pod`` that started at ``poll_started`` could not know (they
    happened after it began), and every fact of other pods; old news is dropped."""
    return [f for f in facts if now - f.at < NEWS_SECONDS and (f.pod != pod or f.at > poll_started)]
