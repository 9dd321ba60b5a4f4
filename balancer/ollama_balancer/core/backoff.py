"""Retry delays of the discovery loops: capped exponential backoff with jitter (pure).

Jitter spreads the retries of many balancer replicas that lost the API server at the
same moment, so they do not all come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.5
    """Seconds before the first retry."""
    maximum: float = 30.0
    """Cap of the delay before jitter, in seconds."""
    jitter: float = 0.5
    """Fraction of the delay drawn at random: the wait lies in
    ``[delay × (1 - jitter), delay]``."""

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 = the first)."""
        base = min(self.initial * 2.0 ** max(0, failures - 1), self.maximum)
        return base * (1.0 - self.jitter * rng.random())
