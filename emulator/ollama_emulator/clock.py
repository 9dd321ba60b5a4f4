"""Emulated time: every duration the emulator plays back goes through a :class:`Clock`.

Emulated seconds are what the catalogue and keep_alive speak; the clock turns
them into real sleeps (``time_scale`` × seconds).  Timing fields reported to
clients (``load_duration`` …) are converted back to emulated nanoseconds so
that a 0.01-scaled cold load still *looks* cold to a balancer; wall-clock
timestamps (``created_at``, ``expires_at``) stay real so clients can compare
them with their own clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

__all__ = ["FOREVER_NS", "Clock", "ScaledClock"]

#: keep_alive forever, as Ollama stores it (MaxInt64 ns: ``expires_at`` in year 2318).
FOREVER_NS = 2**63 - 1


class Clock(Protocol):
    def monotonic(self) -> float:
        """Emulated seconds since an arbitrary origin."""
        ...

    def wall_ns(self) -> int:
        """Real Unix time in nanoseconds (for timestamps)."""
        ...

    def deadline_ns(self, seconds: float) -> int:
        """Real Unix time (ns) at which ``seconds`` of emulated time from now will have passed."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of emulated time."""
        ...


class ScaledClock:
    """The event loop's clock, running ``1/time_scale`` times faster."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale

    def monotonic(self) -> float:
        return time.monotonic() / self.time_scale

    def wall_ns(self) -> int:
        return time.time_ns()

    def deadline_ns(self, seconds: float) -> int:
        now = time.time_ns()
        if math.isinf(seconds):
            return now + FOREVER_NS
        return now + int(seconds * self.time_scale * 1e9)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds * self.time_scale))
