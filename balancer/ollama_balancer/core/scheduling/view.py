"""The scheduler's view of one pool: who holds a slot, who waits, the fair-share clock.

The I/O shell builds a :class:`PoolView` on every pump from the fleet-wide
state (every balancer replica's leases and waiting requests, merged), so
that all replicas decide as one.  Times are seconds on the shell's clock
(``now`` and every timestamp in the view share it); work is measured in
*slot-seconds*, the time a request holds one parallel slot of a pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..priority import Priority

__all__ = ["Candidate", "Holder", "PoolView", "TenantKey"]

#: A fair-share counter's key: tenants are compared only within a class.
TenantKey = tuple[Priority, str]


@dataclass(frozen=True, slots=True)
class Holder:
    """A slot in use: one lease of one request on one pod."""

    lease: str
    """The lease's (or the request's) id, unique in the pool."""
    pod: str
    replica: str
    """The balancer replica relaying it: the one that can cancel it."""
    cls: Priority
    tenant: str
    weight: float = 1.0
    started: float = 0.0
    """When it got the slot."""
    first_byte: float | None = None
    """When generation output started; ``None`` while the model loads or reads the prompt."""
    expected_seconds: float = 0.0
    """Estimated slot-seconds of the whole request (prompt and output)."""
    redo_cost: float = 0.0
    """Estimated slot-seconds to redo what it has done if preempted (prompt + output so far)."""
    preemptions: int = 0
    """How often this request was preempted already."""
    resumable: bool = False
    """Its API and model can continue a partial answer faithfully."""

    def __post_init__(self) -> None:
        _check(self.weight, self.expected_seconds)

    @property
    def expected_end(self) -> float:
        return self.started + self.expected_seconds


@dataclass(frozen=True, slots=True)
class Candidate:
    """A request waiting for a slot of the pool."""

    id: str
    replica: str
    """The balancer replica holding it: the one that binds it."""
    cls: Priority
    tenant: str
    weight: float = 1.0
    arrival: float = 0.0
    expected_seconds: float = 1.0
    """Estimated slot-seconds it will hold (for a continuation: what is left)."""
    deadline: float | None = None
    """Absolute time by which it should be done (a request header), if any."""
    preemptions: int = 0
    """How often it was preempted before (a continuation waiting again)."""
    resumable: bool = False

    def __post_init__(self) -> None:
        _check(self.weight, self.expected_seconds)


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool as the scheduler sees it on one pump (fleet-wide)."""

    model: str
    slots: int
    """All parallel slots of the pods where the model is resident or loading (S)."""
    holders: tuple[Holder, ...] = ()
    waiting: tuple[Candidate, ...] = ()
    counters: Mapping[TenantKey, float] = field(default_factory=dict)
    """Fair-share clock: slot-seconds / weight served per (class, tenant) (:mod:`.fairness`)."""
    now: float = 0.0

    def __post_init__(self) -> None:
        if self.slots < 0:
            raise ValueError("slots must be >= 0")


def _check(weight: float, expected_seconds: float) -> None:
    if not (weight > 0.0 and math.isfinite(weight)):
        raise ValueError("weight must be a finite number > 0")
    if not (expected_seconds >= 0.0 and math.isfinite(expected_seconds)):
        raise ValueError("expected_seconds must be a finite number >= 0")
