"""Prometheus series of the shared state (names are API: the constants below).

Registered into the balancer's own :class:`CollectorRegistry` (one per app, see
:mod:`ollama_balancer.metrics`), by the app that creates the shared state::

    shared_metrics = SharedMetrics(fleet_metrics.registry, held=state.own_leases)
    state = FallbackState(store, local, observer=shared_metrics)

``ollama_fleet_shared_state_up`` is what the alert on a lost store watches.
``ollama_fleet_shared_leases_held`` counts *this replica's* leases: summed over
replicas it is the fleet's occupancy, without double counting.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.shared.model import Lease

__all__ = [
    "FALLBACKS",
    "LEASES_HELD",
    "LEASES_RECLAIMED",
    "LEASE_ACQUIRE",
    "STATE_UP",
    "STORE_REBUILDS",
    "STORE_RECONNECTS",
    "SharedMetrics",
]

STATE_UP = "ollama_fleet_shared_state_up"
FALLBACKS = "ollama_fleet_shared_state_fallbacks_total"
LEASE_ACQUIRE = "ollama_fleet_shared_lease_acquire_seconds"
LEASES_HELD = "ollama_fleet_shared_leases_held"
LEASES_RECLAIMED = "ollama_fleet_shared_leases_reclaimed_total"
STORE_RECONNECTS = "ollama_fleet_shared_store_reconnects_total"
STORE_REBUILDS = "ollama_fleet_shared_store_rebuilds_total"

_ACQUIRE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class _HeldCollector(Collector):
    def __init__(self, held: Callable[[], Iterable[Lease]]) -> None:
        self._held = held

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            LEASES_HELD,
            "slot leases this replica holds, by pod and model (sum over replicas = fleet-wide)",
            labels=["backend", "model"],
        )
        for (pod, model), n in sorted(Tally(lease.key for lease in self._held()).items()):
            family.add_metric([pod, model], float(n))
        yield family


class SharedMetrics:
    """The :class:`~ollama_balancer.shared.fallback.SharedObserver` for Prometheus."""

    def __init__(
        self,
        registry: CollectorRegistry,
        held: Callable[[], Iterable[Lease]] | None = None,
    ) -> None:
        self.up = Gauge(
            STATE_UP,
            "1 while the shared store (Redis/Valkey) answers and this replica shares state; "
            "0 while it serves with local state (or runs without shared_state)",
            registry=registry,
        )
        self.fallbacks = Counter(
            FALLBACKS,
            "times this replica lost the shared store and fell back to local state",
            registry=registry,
        )
        self.acquire = Histogram(
            LEASE_ACQUIRE,
            "round trip of one slot-lease acquire on the shared store",
            ["result"],
            buckets=_ACQUIRE_BUCKETS,
            registry=registry,
        )
        self.reclaimed_total = Counter(
            LEASES_RECLAIMED,
            "expired leases of dead (or partitioned) replicas that this replica reclaimed",
            registry=registry,
        )
        self.reconnects = Counter(
            STORE_RECONNECTS,
            "connections to the shared store opened again: one redis-py dropped (a command "
            "timed out, the server went away) or a new client after an outage or a failover",
            registry=registry,
        )
        self.rebuilds = Counter(
            STORE_REBUILDS,
            "times this replica found the shared store without its contents (restarted "
            "without persistence, flushed, failed over to a replica that lagged) and wrote "
            "back its leases, loads in progress and learned times",
            registry=registry,
        )
        self.up.set(0)
        if held is not None:
            registry.register(_HeldCollector(held))

    def state_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def fallback(self) -> None:
        self.fallbacks.inc()

    def acquire_seconds(self, seconds: float, granted: bool) -> None:
        self.acquire.labels("granted" if granted else "full").observe(seconds)

    def reclaimed(self, count: int) -> None:
        self.reclaimed_total.inc(count)

    def reconnected(self, count: int) -> None:
        self.reconnects.inc(count)

    def rebuilt(self) -> None:
        self.rebuilds.inc()
