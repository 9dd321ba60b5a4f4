"""Kubernetes discovery: list + watch Pods by label selector, publish the Ready ones.

One watcher task per namespace.  Each runs the blocking ``kubernetes`` client on its own
single worker thread (:class:`_Blocking`), one call at a time, so that cancelling the task
can interrupt the call in flight (the response socket is shut down) and then wait for the
thread: nothing outlives :meth:`KubernetesDiscovery.run`.

Resilience, as client-go's reflector does it:

- the watch resumes from the last resourceVersion it saw, so a reconnect misses nothing;
- ``410 Gone`` (the version was compacted away, e.g. after an apiserver restart) → relist;
- any other failure → retry with capped exponential backoff, keeping the last-known set:
  an unreachable API server never makes the balancer forget its backends.

The full set is published only when it changes; the pure mapping from pods to backends is
in :mod:`.pods`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ollama_wire.backend import Backend

from ..backends import Publish
from ..telemetry import get_logger
from .pods import PodKey, PodRules, apply_event, backends_from_pods

__all__ = ["ALL_NAMESPACES", "KubernetesDiscovery", "KubernetesDiscoveryConfig", "WatchStats"]

T = TypeVar("T")

#: Namespace value that means "every namespace" (needs cluster-wide list/watch RBAC).
ALL_NAMESPACES = "*"
#: A watch that ends without an event sooner than this (seconds) counts as a failure.
_MIN_QUIET_WATCH = 1.0
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = get_logger("ollama_fleet.discovery.kubernetes")


@dataclass(frozen=True, slots=True)
class KubernetesDiscoveryConfig:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty = the balancer's own (in-cluster), else the kubeconfig
    context's namespace, else ``default``.  ``"*"`` watches all namespaces."""
    label_selector: str = "app.kubernetes.io/name=ollama"
    """Pods to consider (a Kubernetes label selector)."""
    rules: PodRules = field(default_factory=PodRules)
    """Port name, default port and default slots (see :class:`PodRules`)."""
    kubeconfig: str = ""
    """Path of a kubeconfig; empty = in-cluster config, then ``$KUBECONFIG``/``~/.kube/config``."""
    context: str = ""
    """kubeconfig context; empty = the current one."""
    watch_timeout: int = 240
    """Seconds the server keeps one watch open (``timeoutSeconds``) before the client
    re-watches from its resourceVersion; bounds how long a silently dead connection lasts."""
    request_timeout: float = 30.0
    """Seconds to connect and to wait for a list response."""
    backoff_initial: float = 0.5
    """Seconds before the first retry after a failure; doubles per failure."""
    backoff_max: float = 30.0
    """Cap of the retry delay, in seconds."""


@dataclass(slots=True)
class WatchStats:
    """Counters for logs and tests."""

    lists: int = 0
    """Successful full lists (the first one, then one per 410 Gone)."""
    watches: int = 0
    """Watch requests the server accepted."""
    expired: int = 0
    """410 Gone answers (resourceVersion too old)."""
    errors: int = 0
    """Failed calls (unreachable server, 5xx, 403, broken stream); each waits a backoff."""


class _Expired(Exception):
    """The watch's resourceVersion is gone (410): relist."""


class _StreamError(Exception):
    """The server sent an ERROR event other than 410."""


def _shutdown(response: urllib3.BaseHTTPResponse) -> None:
    """Make a blocked read on ``response`` return, from another thread."""
    # Already closed or released (ValueError, RuntimeError): the reader is not blocked on it.
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        response.shutdown()


class _Blocking:
    """A single worker thread for the blocking client, with an interruptible current call."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._aborted = False

    def track(self, response: urllib3.BaseHTTPResponse) -> urllib3.BaseHTTPResponse:
        """Called on the worker thread with each response it is about to read."""
        with self._lock:
            self._response = response
            aborted = self._aborted
        if aborted:
            _shutdown(response)
        return response

    def untrack(self) -> None:
        with self._lock:
            self._response = None

    async def call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Unblock the worker (a read on a watch may last watch_timeout seconds), wait
            # for it to unwind, then let the cancellation through.
            with self._lock:
                self._aborted = True
                response = self._response
            if response is not None:
                _shutdown(response)
            with contextlib.suppress(BaseException):
                await future
            raise

    def close(self) -> None:
        # Every call has been awaited, so the worker is idle and exits at once.
        self._executor.shutdown(wait=True)


def _load_api_client(cfg: KubernetesDiscoveryConfig) -> tuple[client.ApiClient, str]:
    """An ApiClient and the default namespace (blocking: reads files)."""
    configuration = client.Configuration()
    context = cfg.context or None
    if not cfg.kubeconfig:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration), _SA_NAMESPACE.read_text().strip()
        except (config.ConfigException, OSError):
            pass  # not in a pod: fall back to the user's kubeconfig
    kubeconfig = cfg.kubeconfig or None
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return client.ApiClient(configuration), str(namespace)


def _iter_lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class _PodSource:
    """The blocking list and watch calls of one namespace (all run on the worker thread)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        cfg: KubernetesDiscoveryConfig,
        blocking: _Blocking,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._cfg = cfg
        self._blocking = blocking
        self._response: urllib3.BaseHTTPResponse | None = None
        self._lines: Iterator[bytes] | None = None

    def _request(self, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        common: dict[str, Any] = {
            "label_selector": self._cfg.label_selector,
            "_preload_content": False,  # returns the raw urllib3 response
        }
        response: Any
        if self._namespace == ALL_NAMESPACES:
            response = self._core.list_pod_for_all_namespaces(**common, **kwargs)
        else:
            response = self._core.list_namespaced_pod(self._namespace, **common, **kwargs)
        return self._blocking.track(cast(urllib3.BaseHTTPResponse, response))

    def list(self) -> tuple[list[dict[str, Any]], str]:
        timeout = self._cfg.request_timeout
        response = self._request(_request_timeout=(timeout, timeout))
        try:
            body = json.loads(response.read())
        finally:
            response.release_conn()
            self._blocking.untrack()
        return list(body.get("items") or ()), str(body["metadata"]["resourceVersion"])

    def open_watch(self, resource_version: str) -> None:
        self.close_watch()
        timeout = self._cfg.watch_timeout
        self._response = self._request(
            watch=True,
            resource_version=resource_version,
            # Bookmarks keep resource_version fresh in a quiet namespace, so that a
            # reconnect is less likely to find it compacted (fewer 410s and relists).
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # No byte may arrive for the whole watch: the read timeout must outlast it.
            _request_timeout=(self._cfg.request_timeout, timeout + 30),
        )
        self._lines = _iter_lines(self._response)

    def next_event(self) -> dict[str, Any] | None:
        """The next watch event, or None when the server ended the watch."""
        assert self._lines is not None
        try:
            line = next(self._lines)
        except StopIteration:
            self.close_watch()
            return None
        event: dict[str, Any] = json.loads(line)
        return event

    def close_watch(self) -> None:
        response, self._response, self._lines = self._response, None, None
        if response is not None:
            response.close()
            response.release_conn()
            self._blocking.untrack()


class KubernetesDiscovery:
    """:class:`~ollama_balancer.backends.Discovery` from a Kubernetes pod watch."""

    def __init__(self, cfg: KubernetesDiscoveryConfig | None = None) -> None:
        self.config = cfg or KubernetesDiscoveryConfig()
        self.stats: dict[str, WatchStats] = {}
        self._sets: dict[str, dict[PodKey, Backend]] = {}
        self._published: tuple[Backend, ...] | None = None

    async def run(self, publish: Publish) -> None:
        api, own_namespace = await asyncio.to_thread(_load_api_client, self.config)
        try:
            namespaces = tuple(dict.fromkeys(self.config.namespaces or (own_namespace,)))
            async with asyncio.TaskGroup() as group:
                for namespace in namespaces:
                    self.stats[namespace] = WatchStats()
                    group.create_task(self._watch(api, namespace, publish))
        finally:
            api.close()  # type: ignore[no-untyped-call]

    def _update(self, namespace: str, backends: Mapping[PodKey, Backend], publish: Publish) -> None:
        self._sets[namespace] = dict(backends)
        # Keyed by (namespace, pod): "*" next to a named namespace sees a pod twice.
        by_pod = {key: b for pods in self._sets.values() for key, b in pods.items()}
        merged = tuple(sorted(by_pod.values(), key=lambda b: (b.name, b.url)))
        if merged != self._published:
            self._published = merged
            log.info(
                "discovery.kubernetes.backends",
                namespace=namespace,
                backends=[f"{b.name}={b.url}" for b in merged],
            )
            publish(list(merged))

    async def _watch(self, api: client.ApiClient, namespace: str, publish: Publish) -> None:
        cfg = self.config
        stats = self.stats[namespace]
        blocking = _Blocking(f"k8s-discovery-{namespace}")
        source = _PodSource(api, namespace, cfg, blocking)
        pods: dict[PodKey, Backend] = {}
        resource_version: str | None = None
        delay = cfg.backoff_initial
        expired_in_a_row = 0

        async def backoff(**details: object) -> None:
            nonlocal delay
            stats.errors += 1
            log.warning(
                "discovery.kubernetes.error", namespace=namespace, retry_in=delay, **details
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.backoff_max)

        async def relist() -> None:
            nonlocal resource_version, expired_in_a_row
            stats.expired += 1
            expired_in_a_row += 1
            resource_version = None
            log.info("discovery.kubernetes.relist", namespace=namespace)
            if expired_in_a_row > 1:  # a fresh list's version expired at once: do not spin
                await backoff(error="resourceVersion expired again right after a list")

        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    if resource_version is None:
                        items, version = await blocking.call(source.list)
                        stats.lists += 1
                        pods = backends_from_pods(items, cfg.rules)
                        self._update(namespace, pods, publish)
                    else:
                        version = resource_version
                    resource_version = version
                    await blocking.call(functools.partial(source.open_watch, version))
                    stats.watches += 1
                    opened_at, events = loop.time(), 0
                    while (event := await blocking.call(source.next_event)) is not None:
                        version, pods = self._fold(event, version, pods)
                        resource_version = version
                        events += 1
                        expired_in_a_row = 0
                        delay = cfg.backoff_initial
                        self._update(namespace, pods, publish)
                    # The server ended the watch (timeout_seconds): resume from
                    # resource_version, unless it ends every watch at once.
                    if not events and loop.time() - opened_at < _MIN_QUIET_WATCH:
                        raise _StreamError("the server ended the watch at once")
                    expired_in_a_row = 0
                    delay = cfg.backoff_initial
                except _Expired:
                    await relist()
                except ApiException as exc:
                    if exc.status == 410:
                        await relist()
                    else:
                        await backoff(status=exc.status, reason=exc.reason)
                except (urllib3.exceptions.HTTPError, OSError, ValueError, _StreamError) as exc:
                    await backoff(error=f"{type(exc).__name__}: {exc}")
                finally:
                    source.close_watch()
        finally:
            blocking.close()

    def _fold(
        self, event: Mapping[str, Any], resource_version: str, pods: dict[PodKey, Backend]
    ) -> tuple[str, dict[PodKey, Backend]]:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired(obj.get("message", ""))
            raise _StreamError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
        return str(new_version), apply_event(pods, str(kind), obj, self.config.rules)
