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

from .spec import VRAM_ANNOTATION, LabelSelector, SpecError, parse_quantity
from .state import Installed, Observation, PodState, Resident

__all__ = ["PORT_ANNOTATION", "PodInfo", "observe", "pod_info", "residents"]

#: Optional pod annotation overriding the Ollama port (default: the container port
#: named ``http``, else 11434, Ollama's default).
PORT_ANNOTATION = "ollamafleet.io/port"
OLLAMA_PORT = 11434

#: /api/ps ``expires_at`` further ahead than this means "forever" (a negative
#: keep_alive is stored as MaxInt64 ns, ~292 years; the ollama CLI uses 20 years too).
PINNED_AFTER_YEARS = 20


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the operator needs from a Pod object."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    ip: str
    port: int
    ready: bool
    node: str
    vram_bytes: int | None
    deleting: bool = False

    @property
    def usable(self) -> bool:
        return self.ready and bool(self.ip) and not self.deleting

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


def _port(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> int:
    if annotations.get(PORT_ANNOTATION, "").isdigit():
        return int(annotations[PORT_ANNOTATION])
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == "http" and port.get("containerPort"):
                return int(port["containerPort"])
    return OLLAMA_PORT


def pod_info(body: Mapping[str, Any]) -> PodInfo:
    """Extract :class:`PodInfo` from a Pod (a dict or a kopf body)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    annotations = dict(meta.get("annotations") or {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    try:
        raw = annotations.get(VRAM_ANNOTATION)
        vram = parse_quantity(raw) if raw is not None else None
    except SpecError:
        vram = None  # a typo in one pod's annotation must not stop the pool
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        labels=dict(meta.get("labels") or {}),
        ip=str(status.get("podIP") or ""),
        port=_port(spec, annotations),
        ready=ready and status.get("phase", "Running") == "Running",
        node=str(spec.get("nodeName") or ""),
        vram_bytes=vram,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def select(pods: Iterable[PodInfo], selector: LabelSelector) -> list[PodInfo]:
    return sorted((p for p in pods if selector.matches(p.labels)), key=lambda p: p.name)


def _pinned(expires_at: object, now: datetime) -> bool:
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
    # The balancer's parsers: one reading of Ollama's listings for both components.
    installed = {
        m.key: Installed(
            name=m.name,
            size=m.size,
            digest=m.digest,
            capabilities=frozenset(m.raw.get("capabilities") or ()),
        )
        for m in parse_installed(tags)
    }
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
