"""kopf wiring: watches and an index; pool workers, leader election and finalizers are ours.

kopf is used for what it is good at, watching: the ``ollama_pods`` index (every
pod of the watched namespaces, as PodInfo; kopf fills it before calling any
handler, so a pool never plans on a half-listed namespace) and two event
handlers that keep the latest pool bodies and wake the pool workers.

Everything that acts is the operator's own, because kopf's versions do not fit:

- **pool workers** (:class:`.reconcile.PoolWorker`), one asyncio task per pool,
  instead of kopf daemons: kopf puts a finalizer on every object a daemon runs
  for, so deleting any pool would hang while the operator is down;
- **finalizers** only on ``prune: true`` pools, added and removed by the workers
  (kopf's own finalizer name is set to one nobody uses, so kopf leaves ours be);
- **leader election** on a coordination.k8s.io/v1 Lease (:mod:`.leader`) instead
  of kopf peering, whose dead peers count until their 60 s lifetime ends; every
  replica watches, only the Lease holder runs workers;
- **Events** through :mod:`.recorder`, aggregated (kopf posts a new Event per call);
- **the balancer's demand** (:mod:`.demandfeed`), polled by the leader only, for the
  autoscaled models of every pool: each poll lets every worker re-decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import kopf

from .demandfeed import DemandFeed
from .execute import Executor
from .kube import GROUP, PLURAL, VERSION, KubeAccess
from .lanes import Lanes
from .leader import Elector
from .manifests import ManifestCache
from .metrics import OperatorMetrics, serve_metrics
from .observe import PodInfo, pod_info
from .reconcile import PoolKey, PoolWorker, Shared
from .recorder import EventRecorder
from .settings import OperatorSettings
from .spec import LabelSelector, SpecError, parse_pool_spec

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["COMPONENT", "OperatorRuntime", "build_registry", "run_operator"]

log = logging.getLogger(__name__)

COMPONENT = "ollama-fleet-operator"
#: kopf's own finalizer: no handler of ours needs it, and it must differ from ours
#: (kopf removes *its* finalizer from objects without handlers requiring it).
_KOPF_FINALIZER = "kopf.ollamafleet.io/unused"
_MP = (GROUP, VERSION, PLURAL)


@dataclass
class OperatorRuntime:
    """In-memory state of one operator process (kopf's ``memo``)."""

    settings: OperatorSettings
    kube: KubeAccess
    session: aiohttp.ClientSession | None = None
    shared: Shared | None = None
    executor: Executor | None = None
    recorder: EventRecorder | None = None
    elector: Elector | None = None
    demand: DemandFeed | None = None
    pools: dict[PoolKey, dict[str, Any]] = field(default_factory=dict)
    seen: dict[PoolKey, tuple[Any, bool]] = field(default_factory=dict)
    selectors: dict[PoolKey, LabelSelector] = field(default_factory=dict)
    workers: dict[PoolKey, PoolWorker] = field(default_factory=dict)
    pods: dict[tuple[str, str], PodInfo] = field(default_factory=dict)
    pod_index: Any = None
    leading: bool = False
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    #: makes the reconciles' spans (None: tracing is off)
    tracer: Tracer | None = None

    def pods_of(self, namespace: str) -> list[PodInfo]:
        if self.pod_index is not None:
            return list(self.pod_index.get(namespace, ()))
        return [p for (ns, _), p in self.pods.items() if ns == namespace]

    def new_lanes(self) -> Lanes:
        assert self.executor is not None
        s = self.settings
        return Lanes(
            self.executor.run_one,
            pulls_per_pod=s.actions.pulls_per_pod,
            pulls_total=s.actions.concurrency,
            unrun=self.executor.unrun,
        )

    # -- leadership --------------------------------------------------------------------
    async def lead(self) -> None:
        shared = self.shared
        assert shared is not None
        shared.lanes = self.new_lanes()
        shared.claims.clear()
        self.leading = True
        for key in list(self.pools):
            self.ensure_worker(key)
        if self.demand is not None:
            self.demand.start()

    def demand_polled(self) -> None:
        for worker in list(self.workers.values()):
            worker.on_demand()

    async def follow(self) -> None:
        self.leading = False
        if self.demand is not None:
            await self.demand.stop()
        workers, self.workers = self.workers, {}
        await asyncio.gather(*(w.stop() for w in workers.values()))
        if self.shared is not None:
            await self.shared.lanes.close()

    def ensure_worker(self, key: PoolKey) -> None:
        if not self.leading or self.shared is None:
            return
        worker = self.workers.get(key)
        if worker is None or not worker.running:
            worker = self.workers[key] = PoolWorker(self.shared, key)
            worker.start()

    async def drop(self, key: PoolKey) -> None:
        self.pools.pop(key, None)
        self.seen.pop(key, None)
        self.selectors.pop(key, None)
        self.metrics.forget(key)
        worker = self.workers.pop(key, None)
        if worker is not None:
            await worker.stop()
        if self.shared is not None:
            self.shared.claims.pop(key, None)

    async def shutdown(self) -> None:
        if self.elector is not None:
            await self.elector.stop()  # stops the workers and hands the Lease back
        else:
            await self.follow()
        if self.recorder is not None:
            await self.recorder.close()
        if self.session is not None:
            await self.session.close()


def build_registry(runtime: OperatorRuntime) -> kopf.OperatorRegistry:
    """All handlers, registered on a fresh registry (nothing global, so tests can run many)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_settings = settings
        kopf_settings.persistence.finalizer = _KOPF_FINALIZER
        kopf_settings.posting.enabled = False  # our Events go through the recorder
        # Reconnect watches promptly after an API server restart.
        kopf_settings.watching.server_timeout = 300
        kopf_settings.watching.client_timeout = 330
        kopf_settings.networking.error_backoffs = [1, 2, 5, 10]
        s = runtime.settings
        runtime.session = aiohttp.ClientSession()
        runtime.executor = Executor(
            runtime.session,
            concurrency=s.actions.concurrency,
            attempts=s.actions.attempts,
            backoff=s.actions.backoff_seconds,
            request_timeout=s.actions.ollama_timeout_seconds,
            pull_idle_timeout=s.actions.pull_idle_timeout_seconds,
            load_timeout=s.actions.load_timeout_seconds,
            observer=runtime.metrics,
        )
        runtime.recorder = EventRecorder(runtime.kube, COMPONENT, s.leader.own_identity)
        runtime.demand = DemandFeed(
            runtime.session,
            urls=s.demand.balancer_urls,
            service=s.balancer_ref,
            port=s.demand.balancer_port,
            kube=runtime.kube,
            interval=s.demand.demand_interval_seconds,
            window=s.demand.demand_window_seconds,
            timeout=s.actions.ollama_timeout_seconds,
        )
        runtime.demand.listeners.append(runtime.demand_polled)
        if runtime.demand.configured:
            log.info(
                "autoscaling follows the balancer's demand at %s (mean over %.0fs)",
                ", ".join(
                    [*s.demand.balancer_urls]
                    + (["/".join(s.balancer_ref)] if s.balancer_ref else [])
                ),
                s.demand.demand_window_seconds,
            )
        runtime.shared = Shared(
            settings=s,
            session=runtime.session,
            lanes=runtime.new_lanes(),
            manifests=ManifestCache(
                runtime.session,
                dict(s.sizing.registry_mirrors),
                timeout=s.sizing.manifest_timeout_seconds,
                enabled=s.sizing.manifest_lookup,
            ),
            kube=runtime.kube,
            events=runtime.recorder,
            pools=lambda: runtime.pools,
            pods=runtime.pods_of,
            gate=asyncio.Semaphore(s.watch.reconcile_concurrency),
            tracer=runtime.tracer,
            observer=runtime.metrics,
            demand=runtime.demand,
        )
        if s.leader.standalone:
            log.info("standalone: acting without leader election (one replica only)")
            await runtime.lead()
        else:
            runtime.elector = Elector(
                runtime.kube,
                s.lease_home,
                s.leader.lease_name,
                s.leader.own_identity,
                duration=s.leader.lease_seconds,
                on_start=runtime.lead,
                on_stop=runtime.follow,
            )
            log.info(
                "leader election on Lease %s/%s as %s (duration %.0fs)",
                s.lease_home, s.leader.lease_name, s.leader.own_identity, s.leader.lease_seconds,
            )  # fmt: skip
            runtime.elector.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.shutdown()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return runtime.kube.connection_info()

    @kopf.index("", "v1", "pods", registry=registry, id="ollama_pods")
    def ollama_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, PodInfo]:
        return {namespace or "": pod_info(body)}

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def pod_changed(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> None:
        namespace = namespace or ""
        info = pod_info(body)
        gone = event.get("type") == "DELETED"
        before = (
            runtime.pods.pop((namespace, name), None)
            if gone
            else runtime.pods.get((namespace, name))
        )
        if not gone:
            runtime.pods[(namespace, name)] = info
        if before == info and not gone:
            return  # a change nothing here depends on (resourceVersion, other status fields)
        for key, selector in list(runtime.selectors.items()):
            if key[0] != namespace:
                continue
            worker = runtime.workers.get(key)
            was_selected = worker is not None and name in worker.selected
            if (selector.matches(info.labels) or was_selected) and worker is not None:
                worker.poke()

    @kopf.on.event(*_MP, registry=registry)
    async def pool_changed(
        event: kopf.RawEvent,
        body: kopf.Body,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        spec: kopf.Spec,
        ollama_pods: kopf.Index[str, PodInfo] | None = None,
        **_: Any,
    ) -> None:
        if ollama_pods is not None:
            runtime.pod_index = ollama_pods  # live: kopf keeps updating it
        key = (namespace or "", name)
        if event.get("type") == "DELETED":
            await runtime.drop(key)
            return
        runtime.pools[key] = _plain(body)
        with contextlib.suppress(SpecError):  # the worker reports an invalid spec
            parsed = parse_pool_spec(dict(spec))
            runtime.selectors[key] = parsed.selector
            runtime.metrics.wanted(key, parsed)
        # Our own status patches also arrive here; only a new generation or a deletion
        # is news to the worker.
        seen = (meta.get("generation"), bool(meta.get("deletionTimestamp")))
        news = runtime.seen.get(key) != seen
        runtime.seen[key] = seen
        runtime.ensure_worker(key)
        worker = runtime.workers.get(key)
        if news and worker is not None:
            worker.poke()

    return registry


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy as plain dicts/lists (kopf's bodies are live views)."""

    def copy(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [copy(v) for v in value]
        return value

    result: dict[str, Any] = copy(body)
    return result


async def run_operator(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    tracer: Tracer | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set; ``tracer``
    (:func:`ollama_wire.tracing.tracing_from_env`) traces each reconcile.

    kopf treats every task of the loop started after it as its own and cancels
    them on exit, so give it a loop of its own (``asyncio.run`` in a thread, as
    the tests do) rather than sharing one.
    """
    kube = KubeAccess(settings.cluster.kubeconfig, settings.cluster.context, settings.cluster.home)
    runtime = OperatorRuntime(settings=settings, kube=kube, tracer=tracer)
    metrics_runner = None
    try:
        if settings.process.metrics_port:
            # Started before kopf, which cancels every task begun after it on exit.
            metrics_runner, port = await serve_metrics(
                runtime.metrics, settings.process.metrics_host, settings.process.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics", settings.process.metrics_host, port)
        await kopf.operator(
            registry=build_registry(runtime),
            standalone=True,  # kopf peering is replaced by the Lease (leader.py)
            clusterwide=settings.watch.all_namespaces,
            namespaces=() if settings.watch.all_namespaces else settings.watch.watched_namespaces,
            liveness_endpoint=settings.process.liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=runtime,
        )
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        kube.close()
