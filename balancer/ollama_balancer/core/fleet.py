"""The fleet snapshot: what every backend had installed and resident at its last poll (pure).

Pollers build a new :class:`FleetSnapshot` from poll results with
:func:`apply_poll`; routing reads snapshots and never mutates them.  Model
identity is the canonical name (:func:`names.canonical`); aliases that share
weights are matched through the manifest digest, as Ollama's scheduler keys
runners by blob, not by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel

__all__ = [
    "BackendState",
    "FleetSnapshot",
    "Health",
    "PollResult",
    "apply_poll",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Health(StrEnum):
    """How far a pod's polls can be trusted; only an ``UP`` pod is routable."""

    UP = "up"
    DOWN = "down"  # fail_threshold polls failed in a row
    STALE = "stale"  # answered once, but not within stale_after
    PENDING = "pending"  # discovered, never answered yet


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one backend returned (``error`` set when it failed)."""

    backend: str
    at: float
    installed: tuple[InstalledModel, ...] = ()
    resident: tuple[ResidentModel, ...] = ()
    version: str = ""
    error: str = ""
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class BackendState:
    backend: Backend
    installed: Mapping[str, InstalledModel] = field(default_factory=lambda: _EMPTY)
    resident: Mapping[str, ResidentModel] = field(default_factory=lambda: _EMPTY)
    version: str = ""
    last_ok: float | None = None  # monotonic time of the last good poll
    last_poll: float | None = None
    failures: int = 0  # failed polls in a row
    last_error: str = ""

    @property
    def name(self) -> str:
        return self.backend.name

    def health(self, now: float, fail_threshold: int, stale_after: float) -> Health:
        """The one routability rule: answering, and recently enough to trust.

        Decided once per decision, for every pod, by
        :meth:`~ollama_balancer.core.fleetstate.FleetState.at`.
        """
        if self.failures >= fail_threshold:
            return Health.DOWN
        if self.last_ok is None:
            return Health.PENDING
        if now - self.last_ok > stale_after:
            return Health.STALE
        return Health.UP

    def has_installed(self, key: str) -> bool:
        return key in self.installed

    def resident_model(self, key: str) -> ResidentModel | None:
        """The runner serving ``key``: by name, else by the installed copy's digest."""
        found = self.resident.get(key)
        if found is not None:
            return found
        inst = self.installed.get(key)
        if inst is None or not inst.digest:
            return None
        for res in self.resident.values():
            if res.digest == inst.digest:
                return res
        return None

    @property
    def vram_used(self) -> int:
        return sum(r.size_vram or r.size for r in self.resident.values())


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """All backends, in discovery order; immutable."""

    backends: tuple[BackendState, ...] = ()
    taken_at: float = 0.0

    def get(self, name: str) -> BackendState | None:
        for state in self.backends:
            if state.name == name:
                return state
        return None

    def names(self) -> list[str]:
        return [s.name for s in self.backends]

    def with_backends(self, backends: Sequence[Backend], now: float) -> FleetSnapshot:
        """Adopt a new backend set, keeping what is known about backends that stay."""
        old = {s.name: s for s in self.backends}
        states = []
        for b in backends:
            prev = old.get(b.name)
            states.append(replace(prev, backend=b) if prev else BackendState(backend=b))
        return FleetSnapshot(backends=tuple(states), taken_at=now)


def apply_poll(snapshot: FleetSnapshot, result: PollResult) -> FleetSnapshot:
    """Fold one backend's poll result into a new snapshot (unknown backends are ignored)."""
    states = []
    for state in snapshot.backends:
        if state.name != result.backend:
            states.append(state)
        elif result.error:
            states.append(
                replace(
                    state,
                    failures=state.failures + 1,
                    last_error=result.error,
                    last_poll=result.at,
                )
            )
        else:
            states.append(
                replace(
                    state,
                    installed=MappingProxyType({m.key: m for m in result.installed}),
                    resident=MappingProxyType({m.key: m for m in result.resident}),
                    version=result.version or state.version,
                    last_ok=result.at,
                    last_poll=result.at,
                    failures=0,
                    last_error="",
                )
            )
    return FleetSnapshot(backends=tuple(states), taken_at=max(snapshot.taken_at, result.at))
