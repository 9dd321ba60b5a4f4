"""What this balancer replica knows that Ollama does not expose.

Ollama reports residency (``/api/ps``) but not occupancy: no in-flight count,
no queue, no loads in progress (docs/ollama.md §2.3, §4.5).  The ledger
counts the requests this replica sent to each (backend, model), remembers the
loads it triggered until the first byte proves them done, keeps cool-down
penalties for backends that failed fast, and learns per-model load and service
times.  Routing only reads it; the proxy is the only writer.

Every replica has its own ledger: counts are per replica, and random
tie-breaking keeps replicas from herding onto the same pod.  With shared state
(:mod:`ollama_balancer.shared`) the same reads come from a fleet-wide
occupancy snapshot instead: both satisfy :class:`LedgerView`, the read side
routing needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

__all__ = ["Ledger", "LedgerView", "LoadRecord"]

Key = tuple[str, str]  # (backend name, canonical model)

#: load_duration above this means the request paid for a cold load (docs/ollama.md §6.2).
COLD_LOAD_THRESHOLD = 1.0
_EWMA = 0.3


@dataclass(slots=True)
class LoadRecord:
    started: float
    request_id: str


class LedgerView(Protocol):
    """What routing reads: this replica's :class:`Ledger`, or a fleet-wide
    :class:`ollama_balancer.core.shared.occupancy.Occupancy` snapshot."""

    @property
    def default_load_seconds(self) -> float: ...
    @property
    def default_service_seconds(self) -> float: ...

    def inflight(self, backend: str, model: str) -> int: ...
    def backend_inflight(self, backend: str) -> int: ...
    def loading(self, backend: str, model: str) -> LoadRecord | None: ...
    def loaded_at(self, backend: str, model: str) -> float | None: ...
    def penalised(self, backend: str, now: float) -> bool: ...
    def load_seconds(self, model: str) -> float: ...
    def service_seconds(self, model: str) -> float: ...
    def loading_sizes(self) -> dict[str, list[str]]: ...
    def total_inflight(self) -> int: ...
    def snapshot(self) -> dict[str, object]: ...


class Ledger:
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

    # ---- reads (routing)
    def inflight(self, backend: str, model: str) -> int:
        return self._inflight.get((backend, model), 0)

    def backend_inflight(self, backend: str) -> int:
        return self._backend_inflight.get(backend, 0)

    def loading(self, backend: str, model: str) -> LoadRecord | None:
        return self._loading.get((backend, model))

    def loaded_at(self, backend: str, model: str) -> float | None:
        """When a load this replica started finished (first byte), if not yet forgotten."""
        return self._loaded.get((backend, model))

    def penalties(self) -> Mapping[str, float]:
        """Pod -> end of its fast-fail cool-down (read-only view)."""
        return MappingProxyType(self._penalties)

    def penalised(self, backend: str, now: float) -> bool:
        until = self._penalties.get(backend)
        return until is not None and until > now

    def load_seconds(self, model: str) -> float:
        return self._load_seconds.get(model, self.default_load_seconds)

    def service_seconds(self, model: str) -> float:
        return self._service_seconds.get(model, self.default_service_seconds)

    def loading_sizes(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for backend, model in self._loading:
            out.setdefault(backend, []).append(model)
        return out

    def snapshot(self) -> dict[str, object]:
        """A JSON-able view for /-/fleet and tests."""
        return {
            "inflight": [
                {"backend": b, "model": m, "count": n} for (b, m), n in self._inflight.items() if n
            ],
            "loading": [
                {"backend": b, "model": m, "started": r.started, "request_id": r.request_id}
                for (b, m), r in self._loading.items()
            ],
            "penalties": dict(self._penalties),
            "load_seconds": dict(self._load_seconds),
            "service_seconds": dict(self._service_seconds),
        }

    def total_inflight(self) -> int:
        return sum(self._backend_inflight.values())

    # ---- writes (proxy)
    def begin(self, backend: str, model: str, *, cold: bool, now: float, request_id: str) -> None:
        key = (backend, model)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._backend_inflight[backend] = self._backend_inflight.get(backend, 0) + 1
        if cold and key not in self._loading:
            self._loading[key] = LoadRecord(started=now, request_id=request_id)

    def first_byte(self, backend: str, model: str, *, now: float, request_id: str) -> float | None:
        """The backend answered: a load this request started is done.  Returns its duration."""
        key = (backend, model)
        record = self._loading.get(key)
        if record is None or record.request_id != request_id:
            return None
        del self._loading[key]
        self._loaded[key] = now
        return now - record.started

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

    def penalise(self, backend: str, until: float) -> None:
        self._penalties[backend] = max(until, self._penalties.get(backend, 0.0))

    def clear_penalty(self, backend: str) -> None:
        self._penalties.pop(backend, None)

    def learn_load(self, model: str, seconds: float) -> None:
        self._load_seconds[model] = _ewma(self._load_seconds.get(model), seconds)

    def learn_service(self, model: str, seconds: float) -> None:
        self._service_seconds[model] = _ewma(self._service_seconds.get(model), seconds)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + _EWMA * (new - old)
