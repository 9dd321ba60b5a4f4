"""What this balancer replica knows that Ollama does not expose: the writer of its figures.

Ollama reports residency (``/api/ps``) but not occupancy: no in-flight count,
no queue, no loads in progress (docs/ollama.md §2.3, §4.5).  The ledger
counts the requests this replica sent to each (backend, model), remembers the
loads it triggered until the first byte proves them done, keeps cool-down
penalties for backends that failed fast, and learns per-model load and service
times.  The proxy (through :class:`~ollama_balancer.core.shared.local.LocalState`)
is the only writer; deciders read :meth:`Ledger.occupancy`, an immutable
:class:`~ollama_balancer.core.occupancy.Occupancy` rebuilt only after a write.

Every replica has its own ledger: counts are per replica, and random
tie-breaking keeps replicas from herding onto the same pod.  With shared state
(:mod:`ollama_balancer.shared`) the same value comes fleet-wide from the
shared-state mirror instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .occupancy import Key, LoadRecord, Occupancy

__all__ = ["Ledger"]

#: load_duration above this means the request paid for a cold load (docs/ollama.md §6.2).
COLD_LOAD_THRESHOLD = 1.0
_EWMA = 0.3


class Ledger:
    """This replica's figures; :meth:`occupancy` hands them out as a value."""

    def __init__(self, default_load_seconds: float = 20.0, default_service_seconds: float = 5.0):
        self.default_load_seconds = default_load_seconds
        self.default_service_seconds = default_service_seconds
        self._inflight: dict[Key, int] = {}
        self._backend_inflight: dict[str, int] = {}
        self._loading: dict[Key, LoadRecord] = {}
        self._loaded: dict[Key, float] = {}
        self._penalties: dict[str, float] = {}
        self._load_seconds: dict[str, float] = {}
        self._service_seconds: dict[str, float] = {}
        self._cached: Occupancy | None = None

    # ---- reads
    def occupancy(self) -> Occupancy:
        """The figures now, as a value (the same object until the next write)."""
        if self._cached is None:
            self._cached = Occupancy(
                held=dict(self._inflight),
                loads=dict(self._loading),
                loaded=dict(self._loaded),
                penalties=dict(self._penalties),
                load_times=dict(self._load_seconds),
                service_times=dict(self._service_seconds),
                default_load_seconds=self.default_load_seconds,
                default_service_seconds=self.default_service_seconds,
            )
        return self._cached

    def inflight(self, backend: str, model: str) -> int:
        return self._inflight.get((backend, model), 0)

    def loading(self, backend: str, model: str) -> LoadRecord | None:
        return self._loading.get((backend, model))

    def total_inflight(self) -> int:
        return sum(self._backend_inflight.values())

    def penalties(self) -> Mapping[str, float]:
        """Pod -> end of its fast-fail cool-down (read-only view, no copy)."""
        return MappingProxyType(self._penalties)

    # ---- writes (proxy)
    def begin(self, backend: str, model: str, *, cold: bool, now: float, request_id: str) -> None:
        key = (backend, model)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._backend_inflight[backend] = self._backend_inflight.get(backend, 0) + 1
        if cold and key not in self._loading:
            self._loading[key] = LoadRecord(started=now, request_id=request_id)
        self._cached = None

    def first_byte(self, backend: str, model: str, *, now: float, request_id: str) -> float | None:
        """The backend answered: a load this request started is done.  Returns its duration."""
        key = (backend, model)
        record = self._loading.get(key)
        if record is None or record.request_id != request_id:
            return None
        del self._loading[key]
        self._loaded[key] = now
        self._cached = None
        return now - record.started

    def forget_loaded(self, backend: str, model: str) -> None:
        """The copy a finished load made is gone (the balancer unloaded it)."""
        if self._loaded.pop((backend, model), None) is not None:
            self._cached = None

    def end(self, backend: str, model: str, *, request_id: str) -> None:
        key = (backend, model)
        n = self._inflight.get(key, 0) - 1
        if n > 0:
            self._inflight[key] = n
        else:
            self._inflight.pop(key, None)
        t = self._backend_inflight.get(backend, 0) - 1
        if t > 0:
            self._backend_inflight[backend] = t
        else:
            self._backend_inflight.pop(backend, None)
        record = self._loading.get(key)
        if record is not None and record.request_id == request_id:
            # The loader went away before the first byte: Ollama aborts that load.
            del self._loading[key]
        self._cached = None

    def penalise(self, backend: str, until: float) -> None:
        self._penalties[backend] = max(until, self._penalties.get(backend, 0.0))
        self._cached = None

    def clear_penalty(self, backend: str) -> None:
        if self._penalties.pop(backend, None) is not None:
            self._cached = None

    def learn_load(self, model: str, seconds: float) -> None:
        self._load_seconds[model] = _ewma(self._load_seconds.get(model), seconds)
        self._cached = None

    def learn_service(self, model: str, seconds: float) -> None:
        self._service_seconds[model] = _ewma(self._service_seconds.get(model), seconds)
        self._cached = None


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + _EWMA * (new - old)
