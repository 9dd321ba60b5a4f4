"""Per-model autoscaling state: one step of the decision, and its round trip through status
(pure).

:func:`.autoscale.desired_replicas` decides from demand and a :class:`~.autoscale.ScaleMemory`;
this module keeps that memory per autoscaled model of a pool, with what status shows
(the demand figure, the reason of the last change, what holds the count now).  The
memory lives in ``status.models[].autoscale``, so an operator that restarts (or a
standby that takes over) resumes the same decision: the delay a low demand has already
waited is not waited again, and a copy added a minute ago is not taken away at once.

Times are wall-clock seconds (Unix time): unlike a monotonic clock they mean the same in
the next process.  Status carries them as RFC 3339 with milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .autoscale import Autoscale, ScaleMemory, desired_replicas

__all__ = [
    "Change",
    "ScaleState",
    "initial_state",
    "state_from_status",
    "state_to_status",
    "step",
    "timestamp",
]


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What the pool remembers about one autoscaled model."""

    memory: ScaleMemory
    #: the averaged demand of the last decision; None = unknown
    demand: float | None = None
    #: why the count last changed ("" = never changed since the pool existed)
    reason: str = ""
    #: when it last changed (Unix seconds)
    changed_at: float | None = None
    #: what holds the count right now, for people ("" = nothing to say)
    message: str = ""

    @property
    def replicas(self) -> int:
        return self.memory.replicas


@dataclass(frozen=True, slots=True)
class Change:
    """A scale up or down, for the Event."""

    before: int
    after: int
    reason: str

    @property
    def up(self) -> bool:
        return self.after > self.before


def initial_state(spec: Autoscale, loaded: int) -> ScaleState:
    """A model seen autoscaled for the first time: it starts from the copies it has
    (a pool switched from ``replicas: 3`` keeps 3 until demand says otherwise), within
    min..max."""
    hi = max(spec.min_replicas, spec.max_replicas)
    return ScaleState(ScaleMemory(min(max(loaded, spec.min_replicas), hi)))


def step(
    spec: Autoscale,
    state: ScaleState,
    demand: float | None,
    now: float,
    *,
    unknown: str = "",
) -> tuple[ScaleState, Change | None]:
    """One decision.  ``demand`` None means unknown (``unknown`` says why): the count
    stays where it is (only a changed min..max moves it) and a scale-down's wait starts
    over: nobody knows whether demand stayed low meanwhile."""
    if demand is None:
        lo, hi = spec.min_replicas, max(spec.min_replicas, spec.max_replicas)
        held = min(max(state.memory.replicas, lo), hi)
        message = f"demand unknown ({unknown or 'no reading'}): holding at {held}"
        memory = replace(state.memory, replicas=held, low_since=None)
        if held == state.memory.replicas:
            return replace(state, memory=memory, demand=None, message=message), None
        reason = f"kept within {lo}..{hi} while demand is unknown"
        change = Change(state.memory.replicas, held, reason)
        new = ScaleState(memory, None, reason, now, message)
        return new, change
    decision = desired_replicas(spec, demand, state.memory, now)
    message = _holding(spec, decision.memory, demand, now)
    if decision.replicas == state.memory.replicas:
        return replace(state, memory=decision.memory, demand=demand, message=message), None
    change = Change(state.memory.replicas, decision.replicas, decision.reason)
    return ScaleState(decision.memory, demand, decision.reason, now, message), change


def _holding(spec: Autoscale, memory: ScaleMemory, demand: float, now: float) -> str:
    if memory.low_since is None:
        return ""
    since_up = now - memory.last_up if memory.last_up is not None else math.inf
    left = spec.scale_down_delay - min(now - memory.low_since, since_up)
    return (
        f"demand {demand:g} would need fewer copies: scaling down in {max(left, 0):.0f}s "
        "unless it rises"
    )


# ---- status round trip ------------------------------------------------------------------
def timestamp(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds (what ``format: date-time`` accepts)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _seconds(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def state_to_status(state: ScaleState) -> dict[str, Any]:
    """``status.models[].autoscale``: only fields with a value (1.20 turns "" into null)."""
    m = state.memory
    out: dict[str, Any] = {"replicas": m.replicas}
    if state.demand is not None:
        out["demand"] = round(state.demand, 3)
    if state.reason:
        out["reason"] = state.reason
    if state.message:
        out["message"] = state.message
    for key, value in (
        ("lastScaleTime", state.changed_at),
        ("lastScaleUp", m.last_up),
        ("lastScaleDown", m.last_down),
        ("lowSince", m.low_since),
    ):
        if value is not None:
            out[key] = timestamp(value)
    return out


def state_from_status(raw: object) -> ScaleState | None:
    """Read ``status.models[].autoscale`` back; None when absent or unusable (status is
    user-writable: a bad value starts the model afresh rather than failing the pool)."""
    if not isinstance(raw, Mapping):
        return None
    replicas = raw.get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        return None
    demand = raw.get("demand")
    reason, message = raw.get("reason"), raw.get("message")
    return ScaleState(
        memory=ScaleMemory(
            replicas,
            last_up=_seconds(raw.get("lastScaleUp")),
            last_down=_seconds(raw.get("lastScaleDown")),
            low_since=_seconds(raw.get("lowSince")),
        ),
        demand=float(demand)
        if isinstance(demand, int | float) and not isinstance(demand, bool)
        else None,
        reason=reason if isinstance(reason, str) else "",
        changed_at=_seconds(raw.get("lastScaleTime")),
        message=message if isinstance(message, str) else "",
    )
