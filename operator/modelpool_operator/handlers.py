"""kopf wiring: watches, indexes, one daemon per ModelPool, the prune finalizer.

- ``ollama_pods`` (index): every pod of the watched namespaces, as PodInfo.
- ``pool_ledgers`` (index): each pool's ownership ledger from its status, so a
  restarted operator knows the other pools' claims before reconciling any.
- one daemon per ModelPool loops reconcile -> wait for (a trigger | the resync
  interval | stop).  Triggers: a new ``metadata.generation`` (spec change) and
  any change of a pod the pool selects or selected.  The resync timer is what
  notices Ollama's silent evictions.
- ``on.delete`` only for pools with ``prune: true``, so kopf puts a finalizer
  on exactly those.
Status is patched by the daemon itself (kopf applies a daemon's patch only when
it exits).  Progress and diff-base are kept in annotations, so the status
schema stays strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from .kube import GROUP, PLURAL, VERSION, KubeAccess
from .metrics import OperatorMetrics, serve_metrics
from .observe import PodInfo, pod_info
from .reconcile import PoolKey, Reconciler
from .settings import OperatorSettings
from .spec import LabelSelector, SpecError, parse_pool_spec
from .state import Owned, ledger_from_status

__all__ = [
    "FINALIZER",
    "OperatorRuntime",
    "Peering",
    "build_registry",
    "choose_peering",
    "run_operator",
]

log = logging.getLogger(__name__)

FINALIZER = "ollamafleet.io/finalizer"
_MP = (GROUP, VERSION, PLURAL)


@dataclass
class OperatorRuntime:
    """In-memory state of one operator process (kopf's ``memo``)."""

    settings: OperatorSettings
    kube: KubeAccess
    reconciler: Reconciler | None = None
    session: aiohttp.ClientSession | None = None
    triggers: dict[PoolKey, asyncio.Event] = field(default_factory=dict)
    generations: dict[PoolKey, Any] = field(default_factory=dict)
    selectors: dict[PoolKey, LabelSelector] = field(default_factory=dict)
    pods: dict[tuple[str, str], PodInfo] = field(default_factory=dict)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)

    def trigger(self, key: PoolKey) -> asyncio.Event:
        return self.triggers.setdefault(key, asyncio.Event())


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    # Event messages are capped at 1 KiB by the API server.
    kopf.event(body, type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]


def _pods_of(index: Any, namespace: str) -> list[PodInfo]:
    return list(index.get(namespace, ())) if index is not None else []


def _ledgers_of(index: Any, namespace: str) -> list[tuple[str, tuple[Owned, ...]]]:
    return list(index.get(namespace, ())) if index is not None else []


async def _wait(event: asyncio.Event, stopped: Any, timeout: float) -> None:
    async def stop() -> None:
        await stopped.wait()

    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waits:
            t.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def build_registry(runtime: OperatorRuntime) -> kopf.OperatorRegistry:
    """All handlers, registered on a fresh registry (nothing global, so tests can run many)."""
    registry = kopf.OperatorRegistry()
    settings = runtime.settings

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_settings = settings
        kopf_settings.persistence.finalizer = FINALIZER
        kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="ollamafleet.io"
        )
        kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="ollamafleet.io", key="last-handled-configuration"
        )
        # kopf's own "handler succeeded" chatter stays in the log; our Events use kopf.event().
        kopf_settings.posting.level = logging.WARNING
        # `kubectl describe mp` and the events API tell which replica did what.
        kopf_settings.posting.reporting_component = "ollama-fleet-operator"
        kopf_settings.posting.reporting_instance = runtime.settings.own_identity
        # Reconnect watches promptly after an API server restart.
        kopf_settings.watching.server_timeout = 300
        kopf_settings.watching.client_timeout = 330
        kopf_settings.networking.error_backoffs = [1, 2, 5, 10]
        runtime.session = aiohttp.ClientSession()
        runtime.reconciler = Reconciler(
            settings=runtime.settings,
            session=runtime.session,
            patch_status=runtime.kube.patch_status,
            post_event=_post_event,
            actions=runtime.metrics,
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if runtime.session is not None:
            await runtime.session.close()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return runtime.kube.connection_info()

    @kopf.index("", "v1", "pods", registry=registry, id="ollama_pods")
    def ollama_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, PodInfo]:
        return {namespace or "": pod_info(body)}

    @kopf.index(*_MP, registry=registry, id="pool_ledgers")
    def pool_ledgers(
        name: str, namespace: str | None, status: kopf.Status, **_: Any
    ) -> dict[str, tuple[str, tuple[Owned, ...]]]:
        return {namespace or "": (name, ledger_from_status(status))}

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
        reconciler = runtime.reconciler
        for key, selector in list(runtime.selectors.items()):
            if key[0] != namespace:
                continue
            was_selected = reconciler is not None and name in reconciler.observed.get(key, ())
            if selector.matches(info.labels) or was_selected:
                runtime.trigger(key).set()

    @kopf.on.event(*_MP, registry=registry)
    async def pool_changed(
        event: kopf.RawEvent,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        spec: kopf.Spec,
        **_: Any,
    ) -> None:
        key = (namespace or "", name)
        if event.get("type") == "DELETED":
            runtime.selectors.pop(key, None)
            runtime.generations.pop(key, None)
            runtime.triggers.pop(key, None)
            runtime.metrics.forget(key)
            if runtime.reconciler is not None:
                runtime.reconciler.forget(key)
            return
        with contextlib.suppress(SpecError):  # the daemon reports an invalid spec
            parsed = parse_pool_spec(dict(spec))
            runtime.selectors[key] = parsed.selector
            runtime.metrics.wanted(key, parsed)
        # Our own status patches also arrive here; only a new generation is news.
        generation = meta.get("generation")
        if runtime.generations.get(key) != generation:
            runtime.generations[key] = generation
            runtime.trigger(key).set()

    @kopf.daemon(*_MP, registry=registry, cancellation_timeout=5.0)
    async def pool_daemon(
        name: str,
        namespace: str | None,
        body: kopf.Body,
        stopped: kopf.DaemonStopped,
        logger: Any,
        ollama_pods: kopf.Index[str, PodInfo] | None = None,
        pool_ledgers: kopf.Index[str, tuple[str, tuple[Owned, ...]]] | None = None,
        **_: Any,
    ) -> None:
        namespace = namespace or ""
        key = (namespace, name)
        event = runtime.trigger(key)
        while not stopped:
            event.clear()
            reconciler = runtime.reconciler
            assert reconciler is not None, "startup handler did not run"
            begin = time.monotonic()
            try:
                status = await reconciler.reconcile(
                    body, _pods_of(ollama_pods, namespace), _ledgers_of(pool_ledgers, namespace)
                )
            except Exception:
                # Keep looping: the next trigger or resync tries again.
                runtime.metrics.reconcile_failed(time.monotonic() - begin)
                logger.exception("reconcile of %s/%s failed", namespace, name)
            else:
                runtime.metrics.reconciled(key, status, time.monotonic() - begin)
            await _wait(event, stopped, settings.resync_seconds)

    @kopf.on.delete(
        *_MP,
        registry=registry,
        when=lambda spec, **_: bool(spec.get("prune")),
        retries=3,
        backoff=2.0,
    )
    async def pool_deleted(
        name: str,
        namespace: str | None,
        body: kopf.Body,
        logger: Any,
        ollama_pods: kopf.Index[str, PodInfo] | None = None,
        pool_ledgers: kopf.Index[str, tuple[str, tuple[Owned, ...]]] | None = None,
        **_: Any,
    ) -> None:
        reconciler = runtime.reconciler
        assert reconciler is not None, "startup handler did not run"
        namespace = namespace or ""
        key = (namespace, name)
        await reconciler.reconcile(
            body,
            _pods_of(ollama_pods, namespace),
            _ledgers_of(pool_ledgers, namespace),
            deleting=True,
        )
        left = reconciler.ledgers.get(key, ())
        if left:
            # Pods that do not answer keep what the pool put there; do not block
            # the deletion forever on them, but say so.
            pods = sorted({o.pod for o in left})
            kopf.warn(
                body,
                reason="PruneIncomplete",
                message=f"could not prune on unreachable pods: {', '.join(pods)}",
            )
        reconciler.forget(key)
        runtime.metrics.forget(key)

    return registry


@dataclass(frozen=True)
class Peering:
    """How this process peers: ``name`` None means standalone."""

    name: str | None
    why: str


_GLOB = frozenset("*?[]!,")


def choose_peering(
    settings: OperatorSettings, exists: Callable[[str | None, str], bool]
) -> Peering:
    """Standalone, or mandatory peering through ``settings.peering_name``.

    ``exists(namespace, name)`` (None = cluster-wide) tells whether the peering object
    exists.  Mandatory peering is what makes kopf keep a replica paused until it has seen
    its peers, so it is used whenever the objects are there; without them kopf could not
    coordinate anyway, and the operator runs standalone (one replica only).
    """
    if settings.standalone:
        return Peering(None, "--standalone")
    name = settings.peering_name
    if settings.peering:
        return Peering(name, f"--peering {name}")
    if settings.all_namespaces:
        scopes: list[str | None] = [None]
    else:
        scopes = [ns for ns in settings.watched_namespaces if not _GLOB & set(ns)]
    if not scopes:  # only namespace patterns: nothing to look up, keep peering on
        return Peering(name, "namespace patterns: the peering object must exist in each")
    found = [s for s in scopes if exists(s, name)]
    where = ["cluster-wide" if s is None else s for s in scopes]
    if len(found) == len(scopes):
        return Peering(name, f"peering object {name} found ({', '.join(where)})")
    missing = [w for s, w in zip(scopes, where, strict=True) if s not in found]
    if not found:
        return Peering(
            None,
            f"no peering object {name} ({', '.join(missing)}): standalone, so run one replica only",
        )
    raise ValueError(
        f"peering object {name} is missing in {', '.join(missing)} but exists elsewhere: "
        "create it there, or pass --standalone"
    )


def _exists_or_assume(kube: KubeAccess) -> Callable[[str | None, str], bool]:
    def exists(namespace: str | None, name: str) -> bool:
        try:
            return kube.peering_exists(namespace, name)
        except Exception as exc:  # RBAC, API down: peer rather than risk two acting replicas
            log.warning("cannot look up peering object %s (%s): assuming it exists", name, exc)
            return True

    return exists


async def run_operator(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set.

    kopf treats every task of the loop started after it as its own and cancels
    them on exit, so give it a loop of its own (``asyncio.run`` in a thread, as
    the tests do) rather than sharing one.
    """
    kube = KubeAccess(settings.kubeconfig, settings.context, settings.home)
    runtime = OperatorRuntime(settings=settings, kube=kube)
    metrics_runner = None
    try:
        if settings.metrics_port:
            # Started before kopf, which cancels every task begun after it on exit.
            metrics_runner, port = await serve_metrics(
                runtime.metrics, settings.metrics_host, settings.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
        peering = await asyncio.to_thread(choose_peering, settings, _exists_or_assume(kube))
        log.info(
            "peering: %s, priority %d, identity %s (%s)",
            peering.name or "none (standalone)",
            settings.priority,
            settings.own_identity,
            peering.why,
        )
        await kopf.operator(
            registry=build_registry(runtime),
            standalone=peering.name is None,
            priority=settings.priority,
            # A peering name makes peering mandatory: paused until the peers are known.
            peering_name=peering.name,
            identity=settings.own_identity,  # type: ignore[arg-type]
            clusterwide=settings.all_namespaces,
            namespaces=() if settings.all_namespaces else settings.watched_namespaces,
            liveness_endpoint=settings.liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=runtime,
        )
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        kube.close()
