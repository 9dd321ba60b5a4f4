"""Poll the balancer's demand every few seconds (thin I/O over :mod:`.demand`).

Where the balancer is: ``--balancer-service NAMESPACE/NAME`` (its Endpoints are read
through the API each poll, so replicas that come and go are followed; the chart points
it at the balancer's ops Service) and/or ``--balancer-url`` (fixed base URLs, for a
balancer outside the cluster, development and tests).  Every replica's ``/-/fleet`` is
fetched concurrently and the ``demand`` maps summed; any replica failing makes the
whole poll a failure (see :mod:`.demand`).  A failure is logged when it starts and when
it ends, never raised: autoscaling pauses, nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp

from .demand import (
    UNCONFIGURED,
    DemandReading,
    DemandWindow,
    endpoint_urls,
    parse_demand,
    sum_fleet,
)

__all__ = ["DemandFeed", "EndpointsReader"]

log = logging.getLogger(__name__)


class EndpointsReader(Protocol):
    async def read_endpoints(self, namespace: str, name: str) -> dict[str, Any]: ...


class DemandFeed:
    """The balancer's demand, polled and averaged; :meth:`reading` is what workers use."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        urls: Sequence[str] = (),
        service: tuple[str, str] | None = None,
        port: str = "",
        kube: EndpointsReader | None = None,
        interval: float = 5.0,
        window: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.service = service
        self.port = port
        self.kube = kube
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.window = DemandWindow(window)
        #: called after every poll (the pool workers re-decide)
        self.listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def configured(self) -> bool:
        return bool(self.urls or self.service)

    def reading(self) -> DemandReading:
        if not self.configured:
            return UNCONFIGURED
        return self.window.reading(self.clock())

    # -- polling ---------------------------------------------------------------------------
    async def targets(self) -> list[str]:
        """Every balancer replica to ask (raises when the Service cannot be read)."""
        urls = list(self.urls)
        if self.service is not None:
            if self.kube is None:
                raise RuntimeError("no Kubernetes access to read the balancer's Endpoints")
            namespace, name = self.service
            endpoints = await self.kube.read_endpoints(namespace, name)
            found = endpoint_urls(endpoints, self.port)
            if not found:
                raise RuntimeError(f"service {namespace}/{name} has no ready endpoints")
            urls += found
        return urls

    async def _fetch(self, url: str) -> Mapping[str, float]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self.session.get(f"{url}/-/fleet", timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url}/-/fleet answered {resp.status}")
            return parse_demand(await resp.json(content_type=None))

    async def poll(self) -> DemandReading:
        """One poll into the window; the reading after it."""
        now = self.clock()
        try:
            urls = await self.targets()
            parts = await asyncio.gather(*(self._fetch(u) for u in urls), return_exceptions=True)
            errors = [f"{u}: {_text(p)}" for u, p in zip(urls, parts, strict=True) if _failed(p)]
            if errors:
                raise RuntimeError("; ".join(errors))
            good = [p for p in parts if isinstance(p, Mapping)]
            self.window.add(now, sum_fleet(good))
            if self._failing:
                log.info("balancer demand: answering again (%d replicas)", len(urls))
            self._failing = False
        except Exception as exc:  # any failure: demand unknown, autoscaling holds
            error = f"balancer demand: {_text(exc)}"
            self.window.add(now, None, error)
            if not self._failing:
                log.warning("%s; autoscaled counts hold until it answers", error)
            self._failing = True
        return self.reading()

    async def _run(self) -> None:
        while True:
            await self.poll()
            for listener in list(self.listeners):
                try:
                    listener()
                except Exception:
                    log.exception("demand listener failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.configured and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _failed(part: object) -> bool:
    return isinstance(part, BaseException)


def _text(exc: object) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if isinstance(status, int) and reason:  # an ApiException: its body is long JSON
        return f"{status} {reason}"
    return str(exc) or type(exc).__name__
