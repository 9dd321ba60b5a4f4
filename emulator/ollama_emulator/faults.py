"""Fault knobs of one node, for tests (Python) and ``POST /-/emulator/faults`` (JSON).

Every knob takes an optional ``paths`` (request path prefixes; default: every
Ollama path, never the control endpoints).  Counted knobs (``fail_next``, and
``hang``/``drop_after`` with ``times``) disarm themselves; the rest stay until
:meth:`Faults.clear`.  Going away (connection refused) is a node method,
``stop_listening()``, because it is about the socket, not about a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Failure", "Faults"]


@dataclass
class Failure:
    status: int
    message: str
    body: str | None
    """Raw body to send instead of the path's usual error shape."""
    remaining: int
    paths: tuple[str, ...] | None


@dataclass
class _Armed:
    value: int
    remaining: int | None
    paths: tuple[str, ...] | None


def _matches(paths: tuple[str, ...] | None, path: str) -> bool:
    return paths is None or any(path.startswith(p) for p in paths)


def _paths(paths: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    return (paths,) if isinstance(paths, str) else tuple(paths)


class Faults:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Disarm everything."""
        self._failures: list[Failure] = []
        self._hang: _Armed | None = None
        self._drop: _Armed | None = None
        self.token_rate_factor = 1.0
        """Decode (and prefill) run this many times slower."""
        self.latency = 0.0
        """Extra emulated seconds before every request is handled."""

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        message: str = "emulated failure",
        body: str | None = None,
        paths: Sequence[str] | str | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` and an error body."""
        self._failures.append(Failure(status, message, body, count, _paths(paths)))

    def hang(self, *, times: int | None = None, paths: Sequence[str] | str | None = None) -> None:
        """Accept requests but never answer (until the client gives up)."""
        self._hang = _Armed(0, times, _paths(paths))

    def drop_after(
        self, chunks: int = 0, *, times: int | None = None, paths: Sequence[str] | str | None = None
    ) -> None:
        """Abort the connection after ``chunks`` body chunks of a response."""
        self._drop = _Armed(chunks, times, _paths(paths))

    def slow(self, factor: float = 1.0, *, latency: float = 0.0) -> None:
        """Divide the token rate by ``factor`` and add ``latency`` emulated seconds per request."""
        self.token_rate_factor = max(factor, 1e-9)
        self.latency = latency

    # -- used by the HTTP layer ------------------------------------------------

    def take_failure(self, path: str) -> Failure | None:
        for failure in self._failures:
            if failure.remaining > 0 and _matches(failure.paths, path):
                failure.remaining -= 1
                self._failures = [f for f in self._failures if f.remaining > 0]
                return failure
        return None

    def take_hang(self, path: str) -> bool:
        return self._take(self._hang, path) is not None

    def take_drop(self, path: str) -> int | None:
        return self._take(self._drop, path)

    @staticmethod
    def _take(armed: _Armed | None, path: str) -> int | None:
        if armed is None or not _matches(armed.paths, path):
            return None
        if armed.remaining is not None:
            if armed.remaining <= 0:
                return None
            armed.remaining -= 1
        return armed.value

    # -- control endpoint ------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "fail_next": [asdict(f) for f in self._failures],
            "hang": asdict(self._hang) if self._hang else None,
            "drop_after": asdict(self._drop) if self._drop else None,
            "slow": {"factor": self.token_rate_factor, "latency": self.latency},
        }

    def apply(self, doc: Mapping[str, Any]) -> None:
        """Apply a control-endpoint document, e.g. ``{"fail_next": {"count": 2, "status": 503}}``.

        Keys: ``clear`` (true), ``fail_next``, ``hang``, ``drop_after``, ``slow``;
        each value is the keyword arguments of the method of the same name.
        """
        unknown = set(doc) - {"clear", "fail_next", "hang", "drop_after", "slow"}
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        if doc.get("clear"):
            self.clear()
        if "fail_next" in doc:
            self.fail_next(**dict(doc["fail_next"]))
        if "hang" in doc:
            self.hang(**dict(doc["hang"] or {}))
        if "drop_after" in doc:
            self.drop_after(**dict(doc["drop_after"]))
        if "slow" in doc:
            self.slow(**dict(doc["slow"]))
