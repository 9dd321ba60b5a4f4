"""Counters a test (or ``GET /-/emulator/state``) reads to see what a node did."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Stats"]


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    """Requests received, by path (control endpoints excluded)."""
    generations_started: int = 0
    generations_completed: int = 0
    generations_cancelled: int = 0
    """Client went away while waiting for a slot or while tokens were produced."""
    loads_started: int = 0
    loads_completed: int = 0
    loads_aborted: int = 0
    """The client that triggered the load disconnected before it finished."""
    unloads: int = 0
    evictions: int = 0
    """Unloads done to make room for another model."""
    rejected_busy: int = 0
    """503 ``server busy`` answers (pending queue full)."""
    pulls_started: int = 0
    pulls_completed: int = 0
    downloads_started: int = 0
    """Blob downloads actually started; concurrent pulls of one model share one."""
    faults_injected: int = 0

    def snapshot(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["requests"] = dict(self.requests)
        return doc
