"""What the fleet is doing beyond what the pods say: one immutable value (pure).

Ollama reports residency (``/api/ps``), not occupancy: no in-flight count, no
queue, no loads in progress.  The balancer keeps those figures itself, in one
of two writers: this replica's :class:`~ollama_balancer.core.ledger.Ledger`,
or the shared-state :class:`~ollama_balancer.core.shared.mirror.Mirror`
(fleet-wide: every replica's leases).  Both hand their figures out as an
:class:`Occupancy`, and everything that decides or reports reads that value:
routing and its rankers, late binding (dispatch), unloading, the fleet report
and the wait room.  A reader never sees a live object change under it, and no
figure is converted on the way.

Keys are ``(pod, model)`` with the model's canonical name.  Times are the
local monotonic clock (the mirror converts the store's server times).

A decision that needs figures the writers do not have yet (the requests a
dispatch bound earlier in the same call, the slots the wait room holds for
handlers that have not taken their lease) derives another value with
:meth:`Occupancy.with_bound`; the original is untouched.

Counts are per (pod, model) today.  Figures per lease (which class or tenant
holds a slot) can join as another map without changing the readers above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = ["Key", "LoadRecord", "Occupancy"]

Key = tuple[str, str]
"""(pod name, canonical model)."""

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


def _empty() -> Mapping[Any, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class LoadRecord:
    """A load in progress: when it started, and the request (lease member) that started it."""

    started: float
    request_id: str


@dataclass(frozen=True, slots=True)
class Occupancy:
    """In-flight requests, loads, cool-downs and learned times at one moment.

    The maps belong to the value: writers hand over copies and nobody mutates them.
    """

    held: Mapping[Key, int] = field(default_factory=_empty)
    """Requests in flight (holding or awaiting one of the pod's slots)."""
    loads: Mapping[Key, LoadRecord] = field(default_factory=_empty)
    """Loads in progress, each with the request that started it (one of ``held``)."""
    loaded: Mapping[Key, float] = field(default_factory=_empty)
    """When a load the balancer started finished (its first byte): until a poll shows it
    resident, ``/api/ps`` has not caught up."""
    penalties: Mapping[str, float] = field(default_factory=_empty)
    """Pod -> end of its cool-down after a fast failure."""
    load_times: Mapping[str, float] = field(default_factory=_empty)
    """Model -> learned seconds of a cold load."""
    service_times: Mapping[str, float] = field(default_factory=_empty)
    """Model -> learned seconds one request holds a slot."""
    default_load_seconds: float = 20.0
    default_service_seconds: float = 5.0
    fleet_wide: bool = False
    """Every replica's figures (shared state), not only this replica's."""
    _per_pod: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _loading_on: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _loaded_on: Mapping[str, tuple[tuple[str, float], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Indexes the rankers read per candidate pod: built once per value, not per question.
        per_pod: dict[str, int] = {}
        for (pod, _model), n in self.held.items():
            per_pod[pod] = per_pod.get(pod, 0) + n
        loading_on: dict[str, tuple[str, ...]] = {}
        for pod, model in self.loads:
            loading_on[pod] = (*loading_on.get(pod, ()), model)
        loaded_on: dict[str, tuple[tuple[str, float], ...]] = {}
        for (pod, model), at in self.loaded.items():
            loaded_on[pod] = (*loaded_on.get(pod, ()), (model, at))
        object.__setattr__(self, "_per_pod", per_pod)
        object.__setattr__(self, "_loading_on", loading_on)
        object.__setattr__(self, "_loaded_on", loaded_on)

    # ---- reads
    def inflight(self, pod: str, model: str) -> int:
        return self.held.get((pod, model), 0)

    def backend_inflight(self, pod: str) -> int:
        """Requests in flight on ``pod``, every model."""
        return self._per_pod.get(pod, 0)

    def total_inflight(self) -> int:
        return sum(self._per_pod.values())

    def loading(self, pod: str, model: str) -> LoadRecord | None:
        return self.loads.get((pod, model))

    def loading_on(self, pod: str) -> tuple[str, ...]:
        """The models whose load is under way on ``pod``."""
        return self._loading_on.get(pod, ())

    def loaded_at(self, pod: str, model: str) -> float | None:
        return self.loaded.get((pod, model))

    def loaded_on(self, pod: str) -> tuple[tuple[str, float], ...]:
        """(model, when its load finished) of the loads remembered on ``pod``."""
        return self._loaded_on.get(pod, ())

    def penalised(self, pod: str, now: float) -> bool:
        until = self.penalties.get(pod)
        return until is not None and until > now

    def load_seconds(self, model: str) -> float:
        return self.load_times.get(model, self.default_load_seconds)

    def service_seconds(self, model: str) -> float:
        return self.service_times.get(model, self.default_service_seconds)

    # ---- derived values
    def with_bound(
        self, bound: Mapping[Key, int], loads: Mapping[Key, LoadRecord] = _EMPTY
    ) -> Occupancy:
        """These figures with ``bound`` more requests in flight, and the ``loads`` they
        start where no load is under way yet (as the ledger records a cold request)."""
        fresh = {key: rec for key, rec in loads.items() if key not in self.loads}
        if not any(bound.values()) and not fresh:
            return self
        held = dict(self.held)
        for key, n in bound.items():
            if n:
                held[key] = held.get(key, 0) + n
        return replace(self, held=held, loads={**self.loads, **fresh} if fresh else self.loads)
