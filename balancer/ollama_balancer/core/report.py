"""What one balancer replica sees of the fleet, for people and scrapers (pure).

:func:`build` folds a :class:`~ollama_balancer.core.fleetstate.FleetState` (what
the pods said at their last poll, each pod's health, and the occupancy: in-flight
requests, loads in progress, cool-down penalties) into one :class:`FleetReport`.  ``/-/fleet``
serves :meth:`FleetReport.to_json`, the dashboard renders that JSON, and the
metrics collector reads the same report at scrape time, so the page, the JSON
and the gauges cannot disagree.

Times in the snapshot and the occupancy are monotonic; the report turns them into
ages and remaining seconds relative to the fleet state's ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollama_wire.names import InvalidModelName, display

from .fleet import Health
from .fleetstate import FleetState

__all__ = [
    "DOWN",
    "PENDING",
    "STALE",
    "UP",
    "FleetReport",
    "ModelCell",
    "PodView",
    "build",
    "model_display",
]

UP = Health.UP
DOWN = Health.DOWN
STALE = Health.STALE
PENDING = Health.PENDING


@dataclass(frozen=True, slots=True)
class ModelCell:
    """One (pod, model) of the grid: the union of installed, resident, loading and in-flight."""

    key: str  # canonical name
    name: str  # as the pod prints it (DisplayShortest)
    installed: bool
    resident: bool
    loading: bool
    inflight: int
    size: int = 0
    size_vram: int = 0
    expires_at: str = ""
    context_length: int = 0
    loading_for: float | None = None  # seconds since this replica started the load
    runner: str = ""  # the resident name serving this cell when it is an alias of it

    @property
    def state(self) -> str:
        """The one word the dashboard colours a cell by."""
        if self.resident:
            return "resident"
        if self.loading:
            return "loading"
        if self.installed:
            return "installed"
        return "absent"


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    url: str
    node: str
    slots: int
    vram_bytes: int
    vram_used: int
    status: str  # UP | DOWN | STALE | PENDING
    routable: bool
    failures: int
    last_error: str
    last_poll_age: float | None
    last_ok_age: float | None
    version: str
    penalised_for: float  # seconds of cool-down left (0 = none)
    inflight: int
    models: tuple[ModelCell, ...]


@dataclass(frozen=True, slots=True)
class FleetReport:
    pods: tuple[PodView, ...]
    draining: bool = False

    def model_names(self) -> list[str]:
        """Every model any pod holds or this replica is serving, by display name."""
        return sorted({c.name for p in self.pods for c in p.models})

    def to_json(self) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for pod in self.pods:
            for c in pod.models:
                entry = models.setdefault(
                    c.name,
                    {
                        "name": c.name,
                        "installed_on": [],
                        "resident_on": [],
                        "loading_on": [],
                        "inflight": 0,
                    },
                )
                for flag, where in (
                    (c.installed, "installed_on"),
                    (c.resident, "resident_on"),
                    (c.loading, "loading_on"),
                ):
                    if flag:
                        entry[where].append(pod.name)
                entry["inflight"] += c.inflight
        return {
            "draining": self.draining,
            "pods": [_pod_json(p) for p in self.pods],
            "models": [models[name] for name in sorted(models)],
            "inflight": sum(p.inflight for p in self.pods),
            "loading": [
                {"pod": p.name, "model": c.name, "seconds": _round(c.loading_for)}
                for p in self.pods
                for c in p.models
                if c.loading
            ],
            "penalties": {p.name: _round(p.penalised_for) for p in self.pods if p.penalised_for},
        }


def _pod_json(p: PodView) -> dict[str, Any]:
    return {
        "name": p.name,
        "url": p.url,
        "node": p.node,
        "status": p.status,
        "routable": p.routable,
        "failures": p.failures,
        "last_error": p.last_error,
        "last_poll_age": _round(p.last_poll_age),
        "last_ok_age": _round(p.last_ok_age),
        "version": p.version,
        "slots": p.slots,
        "vram_bytes": p.vram_bytes,
        "vram_used": p.vram_used,
        "penalised_for": _round(p.penalised_for),
        "inflight": p.inflight,
        "models": [
            {
                "name": c.name,
                "state": c.state,
                "installed": c.installed,
                "resident": c.resident,
                "loading": c.loading,
                "inflight": c.inflight,
                "size": c.size,
                "size_vram": c.size_vram,
                "expires_at": c.expires_at,
                "context_length": c.context_length,
                "loading_for": _round(c.loading_for),
                "runner": c.runner,
            }
            for c in p.models
        ],
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def model_display(key: str) -> str:
    """A canonical key as Ollama prints it (``llama3.2:latest``)."""
    try:
        return display(key)
    except InvalidModelName:
        return key


def build(fleet: FleetState, *, draining: bool = False) -> FleetReport:
    """The report of ``fleet`` (its occupancy: this replica's, or fleet-wide)."""
    now, occupancy = fleet.now, fleet.occupancy
    keys_of: dict[str, set[str]] = {}
    for pod, model in (*occupancy.held, *occupancy.loads):
        keys_of.setdefault(pod, set()).add(model)

    pods = []
    for s in fleet.backends:
        keys = set(s.installed) | set(s.resident) | keys_of.get(s.name, set())
        cells = []
        for key in keys:
            inst = s.installed.get(key)
            # An alias (llama3.2:latest ≡ llama3.2:3b) is served by the same runner.
            res = s.resident_model(key)
            record = occupancy.loading(s.name, key)
            started = None if record is None else record.started
            own = s.resident.get(key) or inst
            name = own.name if own else model_display(key)
            cells.append(
                ModelCell(
                    key=key,
                    name=model_display(key) if name == key else name,
                    installed=inst is not None or res is not None,
                    resident=res is not None,
                    loading=started is not None and res is None,
                    inflight=occupancy.inflight(s.name, key),
                    size=res.size if res else inst.size if inst else 0,
                    size_vram=res.size_vram if res else 0,
                    expires_at=res.expires_at if res else "",
                    context_length=res.context_length if res else 0,
                    loading_for=None if started is None else max(0.0, now - started),
                    runner=res.name if res is not None and res.key != key else "",
                )
            )
        cells.sort(key=lambda c: c.name)
        health = fleet.health[s.name]
        penalty = occupancy.penalties.get(s.name) or 0.0
        pods.append(
            PodView(
                name=s.name,
                url=s.backend.url,
                node=s.backend.node,
                slots=s.backend.slots,
                vram_bytes=s.backend.vram_bytes,
                vram_used=s.vram_used,
                status=health.value,
                routable=health is Health.UP,
                failures=s.failures,
                last_error=s.last_error,
                last_poll_age=None if s.last_poll is None else max(0.0, now - s.last_poll),
                last_ok_age=None if s.last_ok is None else max(0.0, now - s.last_ok),
                version=s.version,
                penalised_for=max(0.0, penalty - now),
                inflight=sum(c.inflight for c in cells),
                models=tuple(cells),
            )
        )
    return FleetReport(pods=tuple(pods), draining=draining)
