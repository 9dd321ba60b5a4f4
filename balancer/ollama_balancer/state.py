"""Everything one balancer process owns, behind one typed application key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .admin import Admin
from .backends import Discovery
from .core.fleet import BackendState, PollResult
from .core.fleetstate import FleetState
from .core.ledger import Ledger
from .core.occupancy import Occupancy
from .core.record import RequestRecord
from .core.shared.protocol import SharedState
from .polling import FleetTracker, Poller
from .proxy import Proxy
from .settings import BalancerSettings
from .upstream import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["BALANCER", "Balancer"]


@dataclass
class Balancer:
    """Everything one balancer process owns, reachable from handlers and tests."""

    settings: BalancerSettings
    view: FleetTracker
    ledger: Ledger
    shared: SharedState  # slot leases, loads, learning, quotas: fleet-wide or this replica's
    transport: Transport  # the one way to the pods, open while the app runs
    proxy: Proxy
    admin: Admin
    poller: Poller | None = None
    discovery: Discovery | None = None
    draining: bool = False
    records: list[Callable[[RequestRecord], None]] = field(default_factory=list)
    polls: list[Callable[[PollResult], None]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    #: makes the requests' spans (None: tracing is off, no request is traced)
    tracer: Tracer | None = None

    def publish(self, record: RequestRecord) -> None:
        """Hand a finished request's record to every listener (metrics, logs, quotas)."""
        for listener in self.records:
            listener(record)

    def fleet(self, occupancy: Occupancy | None = None) -> FleetState:
        """The fleet now, with ``occupancy`` (default: the shared state's, fleet-wide when a
        store serves)."""
        s = self.settings
        return FleetState.at(
            self.view.snapshot,
            self.shared.occupancy() if occupancy is None else occupancy,
            self.clock(),
            fail_threshold=s.routing.fail_threshold,
            stale_after=s.routing.stale_after,
        )

    def routable(self) -> list[str]:
        return [b.name for b in self.fleet().routable]

    def routable_states(self) -> list[BackendState]:
        return list(self.fleet().routable)


BALANCER = web.AppKey("balancer", Balancer)
