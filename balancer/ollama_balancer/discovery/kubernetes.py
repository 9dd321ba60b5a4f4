"""Kubernetes discovery: list + watch Pods by label selector, publish the Ready ones.

One watcher task per namespace, on the asyncio client the ``kubernetes`` package ships
(``kubernetes.aio``, aiohttp underneath): no thread, and cancelling the task ends the
request in flight at once.

Resilience, as client-go's reflector does it:

- the watch resumes from the last resourceVersion it saw (bookmarks keep it fresh in a
  quiet namespace), so a reconnect misses nothing;
- ``410 Gone`` (the version was compacted away, e.g. after an apiserver restart) → relist;
- any other failure → retry after a capped exponential backoff with jitter (so many
  balancer replicas do not come back in step), keeping the last-known set: an
  unreachable API server never makes the balancer forget its backends.

The full set is published only when it changes; the pure mapping from pods to backends is
in :mod:`.pods`, the retry delays in :mod:`.backoff`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from ollama_wire.backend import Backend
from ollama_wire.kubeconfig import load_async
from ollama_wire.kubesource import KubeSource

from ..backends import Publish
from ..core.backoff import Backoff
from ..core.pods import PodKey, apply_event, backends_from_pods
from ..settings import DiscoveryKind, DiscoverySettings
from ..telemetry import get_logger

__all__ = ["ALL_NAMESPACES", "KubernetesDiscovery", "WatchStats", "WatchTuning"]

#: Namespace value that means "every namespace" (needs cluster-wide list/watch RBAC).
ALL_NAMESPACES = "*"
#: A watch that ends without an event sooner than this (seconds) counts as a failure.
_MIN_QUIET_WATCH = 1.0

log = get_logger("ollama_fleet.discovery.kubernetes")


@dataclass(frozen=True, slots=True)
class WatchTuning:
    """How the watch talks to the API server (fixed in production; tests shorten it).

    What to watch (namespaces, selector, kubeconfig, port and slots of a pod) is the
    discovery group of the settings (:class:`~ollama_balancer.settings.DiscoverySettings`).
    """

    watch_timeout: int = 240
    """Seconds the server keeps one watch open (``timeoutSeconds``) before the client
    re-watches from its resourceVersion; bounds how long a silently dead connection lasts."""
    request_timeout: float = 30.0
    """Seconds a list request may take, connection included."""
    backoff_initial: float = 0.5
    """Seconds before the first retry after a failure; doubles per failure."""
    backoff_max: float = 30.0
    """Cap of the retry delay, in seconds."""
    backoff_jitter: float = 0.5
    """Fraction of each retry delay drawn at random (0 = none)."""


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


class _Failed(Exception):
    """A call failed in a way worth a retry after a backoff; ``details`` go to the log."""

    def __init__(self, **details: str | int | None) -> None:
        super().__init__(details)
        self.details = details


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    body = (await response.read())[:500].decode("utf-8", "replace")
    response.release()
    if response.status == 410:
        raise _Expired(body)
    raise _Failed(status=response.status, reason=response.reason, body=body)


class _PodSource:
    """The list and watch calls of one namespace."""

    def __init__(
        self, api: client.ApiClient, namespace: str, selector: str, tuning: WatchTuning
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._selector = selector
        self._tuning = tuning

    async def _request(self, **kwargs: Any) -> aiohttp.ClientResponse:
        # The *_without_preload_content calls return the raw aiohttp response: the watch
        # stream is read line by line, and statuses are ours to interpret.
        common: dict[str, Any] = {"label_selector": self._selector}
        if self._namespace == ALL_NAMESPACES:
            response = await self._core.list_pod_for_all_namespaces_without_preload_content(
                **common, **kwargs
            )
        else:
            response = await self._core.list_namespaced_pod_without_preload_content(
                self._namespace, **common, **kwargs
            )
        await _raise_for_status(response)
        return response

    async def list(self) -> tuple[list[dict[str, Any]], str]:
        response = await self._request(_request_timeout=float(self._tuning.request_timeout))
        async with response:
            body = json.loads(await response.read())
        return list(body.get("items") or ()), str(body["metadata"]["resourceVersion"])

    async def open_watch(self, resource_version: str) -> aiohttp.ClientResponse:
        """A watch from ``resource_version`` the server accepted (events: :func:`_events`)."""
        timeout = self._tuning.watch_timeout
        return await self._request(
            watch=True,
            resource_version=resource_version,
            # Bookmarks keep resource_version fresh in a quiet namespace, so that a
            # reconnect is less likely to find it compacted (fewer 410s and relists).
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # One total timeout per request in this client: the whole watch, plus slack.
            _request_timeout=float(timeout + 30),
        )


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """A watch's events (one JSON object per line) until the server ends it."""
    async for line in response.content:
        if line.strip():
            event: dict[str, Any] = json.loads(line)
            yield event


class KubernetesDiscovery:
    """:class:`~ollama_balancer.backends.Discovery` from a Kubernetes pod watch."""

    def __init__(
        self,
        settings: DiscoverySettings | None = None,
        *,
        tuning: WatchTuning | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or DiscoverySettings(kind=DiscoveryKind.KUBERNETES)
        self.tuning = tuning or WatchTuning()
        self.rules = self.settings.pod_rules()
        self.stats: dict[str, WatchStats] = {}
        self._backoff = Backoff(
            initial=self.tuning.backoff_initial,
            maximum=self.tuning.backoff_max,
            jitter=self.tuning.backoff_jitter,
        )
        self._rng = rng or random.Random()
        self._sets: dict[str, dict[PodKey, Backend]] = {}
        self._published: tuple[Backend, ...] | None = None

    async def run(self, publish: Publish) -> None:
        source = KubeSource(kubeconfig=self.settings.kubeconfig)
        configuration, own_namespace = await load_async(source)
        async with client.ApiClient(configuration) as api:
            namespaces = tuple(dict.fromkeys(self.settings.kube_namespaces or (own_namespace,)))
            async with asyncio.TaskGroup() as group:
                for namespace in namespaces:
                    self.stats[namespace] = WatchStats()
                    group.create_task(self._watch(api, namespace, publish))

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
        stats = self.stats[namespace]
        source = _PodSource(api, namespace, self.settings.kube_selector, self.tuning)
        pods: dict[PodKey, Backend] = {}
        resource_version: str | None = None
        failures = 0
        expired_in_a_row = 0

        async def backoff(**details: str | int | None) -> None:
            nonlocal failures
            failures += 1
            stats.errors += 1
            delay = self._backoff.delay(failures, self._rng)
            log.warning(
                "discovery.kubernetes.error",
                namespace=namespace,
                retry_in=round(delay, 3),
                **details,
            )
            await asyncio.sleep(delay)

        async def relist() -> None:
            nonlocal resource_version, expired_in_a_row
            stats.expired += 1
            expired_in_a_row += 1
            resource_version = None
            log.info("discovery.kubernetes.relist", namespace=namespace)
            if expired_in_a_row > 1:  # a fresh list's version expired at once: do not spin
                await backoff(error="resourceVersion expired again right after a list")

        loop = asyncio.get_running_loop()
        while True:
            try:
                if resource_version is None:
                    items, resource_version = await source.list()
                    stats.lists += 1
                    pods = backends_from_pods(items, self.rules)
                    self._update(namespace, pods, publish)
                response = await source.open_watch(resource_version)
                stats.watches += 1
                opened_at, events = loop.time(), 0
                async with response:
                    async for event in _events(response):
                        resource_version, pods = self._fold(event, resource_version, pods)
                        events += 1
                        expired_in_a_row = failures = 0
                        self._update(namespace, pods, publish)
                # The server ended the watch (timeout_seconds): resume from
                # resource_version, unless it ends every watch at once.
                if not events and loop.time() - opened_at < _MIN_QUIET_WATCH:
                    raise _Failed(error="the server ended the watch at once")
                expired_in_a_row = failures = 0
            except _Expired:
                await relist()
            except _Failed as exc:
                await backoff(**exc.details)
            except ApiException as exc:  # raised by the client itself only (bad arguments)
                await backoff(status=exc.status, reason=exc.reason)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
                # Unreachable, refused, a broken stream, a timeout, a body that is no JSON.
                await backoff(error=f"{type(exc).__name__}: {exc}")

    def _fold(
        self, event: Mapping[str, Any], resource_version: str, pods: dict[PodKey, Backend]
    ) -> tuple[str, dict[PodKey, Backend]]:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired(obj.get("message", ""))
            raise _Failed(
                status=obj.get("code"), reason=obj.get("reason"), error=obj.get("message")
            )
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
        return str(new_version), apply_event(pods, str(kind), obj, self.rules)
