"""Progress streams of several Ollama servers merged into the one a single server sends (pure).

``/api/pull`` and ``/api/create`` answer NDJSON progress objects ``{status, digest?,
total?, completed?}`` in a fixed order (docs/ollama.md §2.7): ``pulling manifest``, then
``pulling <12 hex>`` per layer with byte counts, ``verifying sha256 digest``,
``writing manifest``, maybe ``removing unused layers``, ``success``.  Front ends (Open
WebUI, the ``ollama`` CLI) draw one progress bar per digest and show every other status
as a message, so a fan-out to N pods must not repeat a status N times, nor add the pods'
byte counts together.

:class:`ProgressMerge` follows the **slowest** pod: the merged stream is at the earliest
status any unfinished pod is still at, each status is reported once in the order the
pods report them, and a layer's bar shows one copy's ``total`` and the slowest pod's
``completed``.  A pod that fails stops holding the others back; the caller ends the
stream with ``success`` or an ``error`` line from :attr:`ProgressMerge.failures`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressMerge"]

_DONE = math.inf


@dataclass
class _Pod:
    position: float = -1
    """Index in the merged order of the status this pod is at; ``inf`` once finished."""
    bytes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """digest → (total, completed) as last reported."""


class ProgressMerge:
    """Feed each pod's progress objects with :meth:`add`; write what it returns."""

    def __init__(self, pods: Iterable[str]) -> None:
        self._pods = {name: _Pod() for name in pods}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._digest: dict[str, str] = {}
        self._emitted = -1
        self._last: dict[str, Any] | None = None
        self.failures: dict[str, str] = {}
        """pod → error message, for pods that failed."""

    @property
    def finished(self) -> bool:
        return all(p.position == _DONE for p in self._pods.values())

    @property
    def started(self) -> bool:
        """Whether any merged line has been returned yet."""
        return self._last is not None

    def add(self, pod: str, line: dict[str, Any]) -> list[dict[str, Any]]:
        """One progress object from ``pod``; ``success`` finishes it."""
        state = self._pods[pod]
        status = str(line.get("status", ""))
        if status == "success":
            return self.finish(pod)
        if state.position == _DONE:
            return []
        if status not in self._index:
            self._index[status] = len(self._order)
            self._order.append(status)
        position = self._index[status]
        state.position = max(state.position, position)  # never backwards
        digest = line.get("digest")
        if isinstance(digest, str) and digest:
            self._digest.setdefault(status, digest)
            state.bytes[digest] = (int(line.get("total") or 0), int(line.get("completed") or 0))
        return self._advance()

    def finish(self, pod: str, error: str | None = None) -> list[dict[str, Any]]:
        """``pod`` is done: it succeeded, or failed with ``error``."""
        if error is not None:
            self.failures[pod] = error
        self._pods[pod].position = _DONE
        return self._advance()

    def _cursor(self) -> int:
        live = [p.position for p in self._pods.values() if p.position != _DONE]
        if not live:
            return len(self._order) - 1
        return int(min(live))

    def _line(self, index: int) -> dict[str, Any]:
        status = self._order[index]
        digest = self._digest.get(status)
        if digest is None:
            return {"status": status}
        reports = [p.bytes[digest] for p in self._pods.values() if digest in p.bytes]
        total = max((t for t, _ in reports), default=0)
        # Pods still on this layer hold the bar back; pods past it are complete.
        holding = [
            p.bytes.get(digest, (total, 0))[1] for p in self._pods.values() if p.position == index
        ]
        completed = min(holding) if holding else total
        line: dict[str, Any] = {"status": status, "digest": digest}
        if total:
            line["total"] = total
        if completed:
            line["completed"] = completed
        return line

    def _advance(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = self._cursor()
        for index in range(max(self._emitted, 0), cursor + 1):
            line = self._line(index)
            if index == self._emitted and line == self._last:
                continue  # nothing new on the current status
            out.append(line)
            self._last = line
            self._emitted = index
        return out
