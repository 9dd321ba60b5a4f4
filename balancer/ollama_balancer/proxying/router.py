"""The routing call: the pure decision (:mod:`~ollama_balancer.core.routing`) fed with this
process's fleet state (snapshot, occupancy, clock), random source and round-robin turn."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..core.errors import for_outcome
from ..core.fleetstate import FleetState
from ..core.occupancy import Occupancy
from ..core.rankers import Choice
from ..core.routing import Policy, RouteRequest, route
from ..polling import FleetTracker

__all__ = ["Router"]


class Router:
    """Ranks the pods for a request; an unroutable one raises its answer (404, 503)."""

    def __init__(
        self,
        view: FleetTracker,
        occupancy: Callable[[], Occupancy],
        policy: Policy,
        *,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.view = view
        self._occupancy = occupancy
        self.policy = policy
        self.rng = rng
        self.clock = clock
        self._turn = 0  # round-robin baseline's cursor

    def fleet(self) -> FleetState:
        """The fleet as a decision sees it now (routable pods decided once)."""
        return FleetState.at(
            self.view.snapshot,
            self._occupancy(),
            self.clock(),
            fail_threshold=self.policy.fail_threshold,
            stale_after=self.policy.stale_after,
        )

    def __call__(self, req: RouteRequest) -> tuple[Choice, ...]:
        decision = route(req, self.fleet(), self.policy, self.rng, self._turn)
        self._turn += 1
        if decision.unroutable is not None:
            raise for_outcome(decision.unroutable)
        return decision.ranked
