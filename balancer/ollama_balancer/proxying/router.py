"""The routing call: the pure decision (:mod:`~ollama_balancer.core.routing`) fed with this
process's fleet snapshot, slot occupancy, clock, random source and round-robin turn."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..core.errors import for_outcome
from ..core.ledger import LedgerView
from ..core.rankers import Choice
from ..core.routing import Policy, RouteRequest, route
from ..polling import FleetTracker
from ..settings import BalancerSettings

__all__ = ["Router", "policy_of"]


def policy_of(settings: BalancerSettings) -> Policy:
    """The routing policy the settings describe."""
    return Policy(
        fail_threshold=settings.fail_threshold,
        stale_after=settings.stale_after,
        affinity_bound=settings.affinity_bound,
        auto_pull=settings.auto_pull,
        strategy=settings.routing_policy,
    )


class Router:
    """Ranks the pods for a request; an unroutable one raises its answer (404, 503)."""

    def __init__(
        self,
        view: FleetTracker,
        occupancy: Callable[[], LedgerView],
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

    def __call__(self, req: RouteRequest) -> tuple[Choice, ...]:
        decision = route(
            req,
            self.view.snapshot,
            self._occupancy(),
            self.policy,
            self.clock(),
            self.rng,
            self._turn,
        )
        self._turn += 1
        if decision.unroutable is not None:
            raise for_outcome(decision.unroutable)
        return decision.ranked
