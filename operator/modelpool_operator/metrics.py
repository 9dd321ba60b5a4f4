"""Prometheus metrics of one operator process: names, how they are fed, and their server.

Metric names and label names are API (docs/design.md §2.10): the constants below.
Every :class:`OperatorMetrics` owns its registry, so several operators in one
process (the tests) never share series.  It is fed from two places only:

* each pass of a pool worker (:mod:`reconcile`), through the
  :class:`~modelpool_operator.reconcile.ReconcileObserver` protocol it declares:
  :meth:`OperatorMetrics.reconciled` with the status the pass wrote (pools by
  condition) or :meth:`OperatorMetrics.reconcile_failed`; and the pool watch
  (:mod:`handlers`): :meth:`OperatorMetrics.wanted` with a pool's parsed spec;
* the executor's action call (:mod:`execute`), through the
  :class:`~modelpool_operator.execute.ActionObserver` protocol it declares:
  :meth:`OperatorMetrics.started` and :meth:`OperatorMetrics.finished`, plus
  the actions the pod lanes end without running (skipped after a failed pull or
  an unreachable pod; withdrawn or stopped: cancelled).

``ollama_fleet_operator_pool_model_wanted`` is what alerting joins with the
balancer's ``ollama_fleet_model_routable_backends``: a model a pool lists but
that no routable pod holds (docs/runbook.md, ``OllamaFleetWantedModelUnroutable``).
Its ``model`` label is the name as the balancer prints it (``llama3.2:latest``
for ``llama3.2``), so the two series join on ``model``.

Cardinality: pools × models for the wanted series, condition types × statuses
for the pool counts, action kinds × results for the rest.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ollama_wire.names import display

from .execute import Outcome
from .spec import PoolSpec
from .state import Action, ActionKind

__all__ = ["OperatorMetrics", "serve_metrics"]

PoolKey = tuple[str, str]  # (namespace, name)

# ---- metric names (API)
BUILD_INFO = "ollama_fleet_operator_build_info"
RECONCILES = "ollama_fleet_operator_reconciles_total"
RECONCILE_DURATION = "ollama_fleet_operator_reconcile_duration_seconds"
ACTIONS = "ollama_fleet_operator_actions_total"
ACTION_DURATION = "ollama_fleet_operator_action_duration_seconds"
PULLS_IN_PROGRESS = "ollama_fleet_operator_pulls_in_progress"
POOLS = "ollama_fleet_operator_pools"
POOL_MODEL_WANTED = "ollama_fleet_operator_pool_model_wanted"

# ---- label values
OK = "ok"
ERROR = "error"  # a reconcile that raised (the daemon retries at the next trigger)
FAILED = "failed"  # an action that failed after its attempts
SKIPPED = "skipped"  # an action not attempted (pod unreachable, its pull failed)
CANCELLED = "cancelled"  # an action interrupted by shutdown or a pool's deletion

_RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# pulls take minutes, unloads milliseconds
_ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _PoolCollector(Collector):
    """Pools by condition and the models each pool wants, read at scrape time."""

    def __init__(self, owner: OperatorMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        pools = GaugeMetricFamily(
            POOLS,
            "ModelPools by condition type and status, as the last reconcile wrote them",
            labels=["condition", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        for conditions in self._owner.conditions.values():
            for pair in conditions.items():
                counts[pair] = counts.get(pair, 0) + 1
        for (condition, status), n in sorted(counts.items()):
            pools.add_metric([condition, status], float(n))
        wanted = GaugeMetricFamily(
            POOL_MODEL_WANTED,
            "1 for every model a ModelPool lists (model as the balancer names it)",
            labels=["pool_namespace", "pool", "model"],
        )
        for (namespace, name), models in sorted(self._owner.models.items()):
            for model in models:
                wanted.add_metric([namespace, name, model], 1.0)
        yield from (pools, wanted)


class OperatorMetrics:
    """The metrics of one operator process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info(
            BUILD_INFO.removesuffix("_info"),
            "the ollama-fleet package and Python running this operator (always 1)",
            registry=r,
        ).info({"version": _version(), "python_version": platform.python_version()})
        self.reconciles = Counter(
            RECONCILES, "reconciles of a ModelPool, by result (ok | error)", ["result"], registry=r
        )
        self.reconcile_duration = Histogram(
            RECONCILE_DURATION,
            "duration of one pass of a pool worker (observe, plan, hand-off, status)",
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.actions = Counter(
            ACTIONS,
            "actions on Ollama pods by kind (pull | load | unload | delete) and result "
            "(ok | failed | skipped | cancelled)",
            ["kind", "result"],
            registry=r,
        )
        self.action_duration = Histogram(
            ACTION_DURATION,
            "duration of one attempted action, retries included",
            ["kind"],
            buckets=_ACTION_BUCKETS,
            registry=r,
        )
        self.pulls = Gauge(PULLS_IN_PROGRESS, "pulls running right now", registry=r)
        for kind in ActionKind:  # every series present from the start, at 0
            self.action_duration.labels(kind.value)
            for result in (OK, FAILED):
                self.actions.labels(kind.value, result)
        for result in (OK, ERROR):
            self.reconciles.labels(result)
        #: condition type -> status of each pool, from its last written status
        self.conditions: dict[PoolKey, dict[str, str]] = {}
        #: models each pool lists, as the balancer names them
        self.models: dict[PoolKey, tuple[str, ...]] = {}
        r.register(_PoolCollector(self))

    # ---- the reconcile entry
    def reconciled(self, key: PoolKey, status: Mapping[str, Any] | None, seconds: float) -> None:
        """A reconcile finished; ``status`` is what it wrote (None when it wrote none)."""
        self.reconciles.labels(OK).inc()
        self.reconcile_duration.observe(seconds)
        if status is not None:
            self.conditions[key] = {
                str(c.get("type")): str(c.get("status"))
                for c in status.get("conditions") or ()
                if isinstance(c, Mapping)
            }

    def reconcile_failed(self, seconds: float) -> None:
        self.reconciles.labels(ERROR).inc()
        self.reconcile_duration.observe(seconds)

    def wanted(self, key: PoolKey, spec: PoolSpec) -> None:
        self.models[key] = tuple(sorted({display(m.key) for m in spec.models}))

    def forget(self, key: PoolKey) -> None:
        """The pool is gone: its series go too."""
        self.conditions.pop(key, None)
        self.models.pop(key, None)

    # ---- the executor (execute.ActionObserver)
    def started(self, action: Action) -> None:
        if action.kind is ActionKind.PULL:
            self.pulls.inc()

    def finished(self, action: Action, outcome: Outcome | None, seconds: float | None) -> None:
        """``outcome`` None: cancelled; ``seconds`` None: never attempted (skipped)."""
        if seconds is not None and action.kind is ActionKind.PULL:
            self.pulls.dec()
        if outcome is None:
            result = CANCELLED
        elif outcome.ok:
            result = OK
        else:
            result = SKIPPED if seconds is None else FAILED
        self.actions.labels(action.kind.value, result).inc()
        if seconds is not None:
            self.action_duration.labels(action.kind.value).observe(seconds)


def _version() -> str:
    try:
        return metadata.version("ollama-fleet")
    except metadata.PackageNotFoundError:
        return "unknown"


async def serve_metrics(
    metrics: OperatorMetrics, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """``GET /metrics`` on host:port (OpenMetrics and gzip negotiated); returns the bound port."""
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
    return runner, bound
