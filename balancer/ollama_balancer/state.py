"""Everything one balancer process owns, behind one typed application key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .admin import Admin
from .backends import Discovery
from .core.fleet import BackendState, PollResult
from .core.ledger import Ledger
from .core.record import RequestRecord
from .core.shared.protocol import SharedState
from .polling import FleetTracker, Poller
from .proxy import Proxy
from .settings import BalancerSettings

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
    proxy: Proxy
    admin: Admin
    poller: Poller | None = None
    session: aiohttp.ClientSession | None = None
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

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the balancer's HTTP session is not started")
        return self.session

    def routable(self) -> list[str]:
        now = self.clock()
        s = self.settings
        return [
            b.name
            for b in self.view.snapshot.backends
            if b.routable(now, s.routing.fail_threshold, s.routing.stale_after)
        ]

    def routable_states(self) -> list[BackendState]:
        now = self.clock()
        s = self.settings
        return [
            b
            for b in self.view.snapshot.backends
            if b.routable(now, s.routing.fail_threshold, s.routing.stale_after)
        ]


BALANCER = web.AppKey("balancer", Balancer)
