"""The fleet as one decision sees it: snapshot, occupancy, clock and routable pods (pure).

Every decider reads the same :class:`FleetState`: routing and its rankers, late
binding (dispatch, for every waiting request of a pump), unloading, and the
fleet report behind ``/-/fleet`` and the gauges.  It pairs what the pods said
at their last poll (:class:`~ollama_balancer.core.fleet.FleetSnapshot`) with
what the balancer is doing to them
(:class:`~ollama_balancer.core.occupancy.Occupancy`) at one ``now``, and
decides each pod's :class:`~ollama_balancer.core.fleet.Health` once, so no
reader applies ``fail_threshold`` and ``stale_after`` again, and all of them
agree on which pods are routable.

Routable means polled successfully, recently enough, and fewer than
``fail_threshold`` failures in a row.  A penalised pod (cool-down after a fast
failure, ``penalised`` at ``now``) stays routable: the rankers only move it behind
every healthy choice.  Draining is the balancer's own state (``/readyz``), not a
pod's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .fleet import BackendState, FleetSnapshot, Health
from .occupancy import Occupancy

__all__ = ["FleetState"]


@dataclass(frozen=True, slots=True)
class FleetState:
    """One decision's view of the fleet; build it with :meth:`at`."""

    snapshot: FleetSnapshot
    occupancy: Occupancy
    now: float
    health: Mapping[str, Health]
    """Pod name -> its health at ``now``."""
    routable: tuple[BackendState, ...]
    """The ``UP`` pods, in discovery order."""
    by_name: Mapping[str, BackendState]
    """Pod name -> its state (a decision looks pods up by name for every choice)."""
    penalised: frozenset[str]
    """Pods in their cool-down at ``now``."""

    @classmethod
    def at(
        cls,
        snapshot: FleetSnapshot,
        occupancy: Occupancy,
        now: float,
        *,
        fail_threshold: int,
        stale_after: float,
    ) -> FleetState:
        health = {s.name: s.health(now, fail_threshold, stale_after) for s in snapshot.backends}
        return cls(
            snapshot,
            occupancy,
            now,
            health,
            tuple(s for s in snapshot.backends if health[s.name] is Health.UP),
            {s.name: s for s in snapshot.backends},
            _penalised(occupancy, now),
        )

    @property
    def backends(self) -> tuple[BackendState, ...]:
        """Every known pod, routable or not, in discovery order."""
        return self.snapshot.backends

    def get(self, name: str) -> BackendState | None:
        return self.by_name.get(name)

    def is_routable(self, name: str) -> bool:
        return self.health.get(name) is Health.UP

    def with_occupancy(self, occupancy: Occupancy) -> FleetState:
        """The same pods at the same moment with other figures (a decision's scratch copy)."""
        penalised = (
            self.penalised
            if occupancy.penalties is self.occupancy.penalties
            else _penalised(occupancy, self.now)
        )
        return FleetState(
            self.snapshot, occupancy, self.now, self.health, self.routable, self.by_name, penalised
        )


def _penalised(occupancy: Occupancy, now: float) -> frozenset[str]:
    return frozenset(pod for pod in occupancy.penalties if occupancy.penalised(pod, now))
