"""Fleet-wide quota verdicts (pure).

The arithmetic is the local one of :class:`ollama_balancer.core.auth.KeyState`, run
server-side by the ``quota_admit`` script so every replica debits the same
buckets.  Requests and tokens per minute are **token buckets** (continuous
refill at ``limit / 60`` a second, a burst of one minute's allowance), not
windows: no edge where twice the limit passes in a minute (a fixed window's
flaw) and O(1) memory per key (a sliding log keeps one entry per request).
Tokens are charged when a request ends (only then are they known), so the
token bucket may go negative, floored at one minute of debt.

The script answers a code and a wait; :func:`refusal` turns them into the same
message and ``Retry-After`` the local limiter gives.
"""

from __future__ import annotations

import math

from ..auth import ApiKey

__all__ = ["ADMITTED", "CONCURRENCY", "REQUESTS", "TOKENS", "refusal"]

ADMITTED = 0
CONCURRENCY = 1
TOKENS = 2
REQUESTS = 3


def refusal(code: int, key: ApiKey, wait_seconds: float) -> tuple[str, int]:
    """(message, Retry-After seconds) for a refused request of ``key``."""
    retry = max(1, math.ceil(wait_seconds))
    if code == CONCURRENCY:
        return (f"too many concurrent requests (limit {key.max_concurrent})", 1)
    if code == TOKENS:
        return (f"token rate limit exceeded ({key.tokens_per_minute}/min)", retry)
    if code == REQUESTS:
        return (f"request rate limit exceeded ({key.requests_per_minute}/min)", retry)
    raise ValueError(f"unknown quota code {code}")
