"""Observe: Kubernetes pods -> each pod's /api/tags and /api/ps -> an Observation.

Pods come from kopf's in-memory index (no extra API calls); their Ollama
servers are asked concurrently, each with a short timeout, so one hung pod
costs one timeout, not one per pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ollama_wire.client import OllamaClient, OllamaError
from ollama_wire.models import parse_installed, parse_resident
from ollama_wire.pods import pod_endpoint, pod_vram_bytes

from .spec import LabelSelector
from .state import Observation, PodState, Resident

__all__ = ["PodInfo", "observe", "pod_info", "residents", "select"]

#: /api/ps ``expires_at`` further ahead than this means "forever" (a negative
#: keep_alive is stored as MaxInt64 ns, ~292 years; the ollama CLI uses 20 years too).
PINNED_AFTER_YEARS = 20


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the operator needs from a Pod object."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    endpoint: str | None
    """The pod's Ollama URL (:func:`ollama_wire.pods.pod_endpoint`, as the balancer reads
    it); None when the pod is not Ready, has no IP or is being deleted."""
    node: str
    vram_bytes: int | None
    """From the ``ollamafleet.io/vram-bytes`` annotation; None = the pool's default."""
    deleting: bool = False

    @property
    def usable(self) -> bool:
        return self.endpoint is not None

    @property
    def url(self) -> str:
        return self.endpoint or ""


def pod_info(body: Mapping[str, Any]) -> PodInfo:
    """Extract :class:`PodInfo` from a Pod (a dict or a kopf body)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        labels=dict(meta.get("labels") or {}),
        endpoint=pod_endpoint(body),
        node=str(spec.get("nodeName") or ""),
        vram_bytes=pod_vram_bytes(body),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def select(pods: Iterable[PodInfo], selector: LabelSelector) -> list[PodInfo]:
    return sorted((p for p in pods if selector.matches(p.labels)), key=lambda p: p.name)


def _pinned(expires_at: str, now: datetime) -> bool:
    # Only the year matters; parsing Go's nanosecond timestamps fully is not needed.
    try:
        return int(str(expires_at)[:4]) > now.year + PINNED_AFTER_YEARS
    except ValueError:
        return False


async def _observe_pod(
    session: aiohttp.ClientSession, info: PodInfo, timeout: float, now: datetime
) -> PodState:
    client = OllamaClient(session, info.url, timeout=timeout)
    base = PodState(name=info.name, url=info.url, node=info.node, vram_bytes=info.vram_bytes)
    try:
        tags, ps = await asyncio.gather(client.tags(), client.ps())
    except OllamaError as exc:
        return replace(base, error=f"{info.url}: {exc.message or exc}")
    # The kernel's parsers and /api/tags record: one reading of Ollama's listings.
    installed = {m.key: m for m in parse_installed(tags)}
    return replace(base, installed=installed, resident=_residents(ps, now))


def _residents(ps: list[dict[str, Any]], now: datetime) -> dict[str, Resident]:
    return {
        m.key: Resident(
            name=m.name,
            size=m.size,
            pinned=_pinned(m.expires_at, now),
            context_length=m.context_length,
        )
        for m in parse_resident(ps)
    }


async def residents(
    session: aiohttp.ClientSession, url: str, *, timeout: float = 5.0
) -> dict[str, Resident] | None:
    """What one pod has in memory (``/api/ps`` only), or None if it does not answer."""
    try:
        ps = await OllamaClient(session, url, timeout=timeout).ps()
    except OllamaError:
        return None
    return _residents(ps, datetime.now(UTC))


async def observe(
    session: aiohttp.ClientSession,
    pods: Sequence[PodInfo],
    *,
    timeout: float = 5.0,
    now: datetime | None = None,
) -> Observation:
    """Ask every usable pod in ``pods`` (already filtered by the selector) what it holds."""
    now = now or datetime.now(UTC)
    usable = [p for p in pods if p.usable]
    states = await asyncio.gather(*(_observe_pod(session, p, timeout, now) for p in usable))
    return Observation(
        pods=tuple(sorted(states, key=lambda s: s.name)),
        existing=frozenset(p.name for p in pods if not p.deleting),
    )
