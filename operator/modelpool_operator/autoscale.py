"""How many warm copies a model should have, from its demand (pure).

A ModelPool model may say ``minReplicas``/``maxReplicas``/``targetRequests``/
``scaleDownDelaySeconds`` instead of a fixed ``replicas`` (KubeAI's names).  Demand is
the balancer's per-model figure — requests in flight plus queued, fleet-wide —
averaged over a window by the caller.  The decision:

* **up promptly**: as soon as the averaged demand needs more copies
  (``ceil(demand / targetRequests)``), up to ``maxReplicas``;
* **down only after the delay**: demand must have stayed low enough for fewer copies
  for ``scaleDownDelaySeconds`` without a break, and the last scale-up must be at
  least that old; then one step down to what demand needs;
* **hysteresis**: "low enough" means the smaller count would run at most
  ``1 - TOLERANCE`` of its target, so demand that hovers at a boundary never flips
  the count back and forth;
* never above ``maxReplicas``, never below ``minReplicas`` (``0`` lets the last copy go).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = [
    "TOLERANCE",
    "Autoscale",
    "ScaleDecision",
    "ScaleMemory",
    "Scaled",
    "desired_replicas",
    "needed",
]

#: Scale down only when the smaller count would be at most 90% busy (HPA's 10% tolerance).
TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class Autoscale:
    """The autoscaling part of one ModelPool model's spec."""

    min_replicas: int
    max_replicas: int
    target_requests: float  # in-flight + queued requests one warm copy should average
    scale_down_delay: float  # seconds


@dataclass(frozen=True, slots=True)
class ScaleMemory:
    """What the last decisions left behind (kept in the pool's status between cycles)."""

    replicas: int  # the count last decided
    last_up: float | None = None  # when it last went up (clock seconds)
    last_down: float | None = None
    low_since: float | None = None  # since when demand has allowed fewer copies


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    replicas: int
    memory: ScaleMemory
    reason: str  # for status and Events; "" when nothing changed


@dataclass(frozen=True, slots=True)
class Scaled:
    """An autoscaled model's decision as the planner takes it."""

    replicas: int
    demand: float | None  # None: unknown
    target: float

    def unmet(self, placed: int) -> float:
        """Requests beyond what ``placed`` copies serve at their target."""
        return max(0.0, (self.demand or 0.0) - placed * self.target)


def needed(demand: float, target: float) -> int:
    """Copies that serve ``demand`` at ``target`` requests each (0 for no demand)."""
    if demand <= 0:
        return 0
    return math.ceil(demand / target - 1e-9)


def desired_replicas(
    spec: Autoscale, demand: float, memory: ScaleMemory, now: float
) -> ScaleDecision:
    lo, hi = spec.min_replicas, max(spec.min_replicas, spec.max_replicas)
    current = min(max(memory.replicas, lo), hi)
    want = min(max(needed(demand, spec.target_requests), lo), hi)
    figure = f"demand {demand:g} at target {spec.target_requests:g} per copy"
    if want > current:
        return ScaleDecision(
            want,
            ScaleMemory(want, last_up=now, last_down=memory.last_down, low_since=None),
            f"scaled up {current}→{want}: {figure}",
        )
    # How far down could demand go with a margin: the largest count below `current` at which
    # the copies would still run at most (1 - TOLERANCE) of their target.
    down_to = max(lo, needed(demand, spec.target_requests * (1 - TOLERANCE)))
    # A count outside a changed min..max is brought inside at once, and says so.
    kept = f"kept within {lo}..{hi}: {figure}" if current != memory.replicas else ""
    if down_to >= current:
        return ScaleDecision(current, replace(memory, replicas=current, low_since=None), kept)
    low_since = memory.low_since if memory.low_since is not None else now
    waited = now - low_since
    since_up = now - memory.last_up if memory.last_up is not None else math.inf
    if waited < spec.scale_down_delay or since_up < spec.scale_down_delay:
        return ScaleDecision(current, replace(memory, replicas=current, low_since=low_since), kept)
    return ScaleDecision(
        down_to,
        ScaleMemory(down_to, last_up=memory.last_up, last_down=now, low_since=None),
        f"scaled down {current}→{down_to} after {spec.scale_down_delay:g}s: {figure}",
    )
