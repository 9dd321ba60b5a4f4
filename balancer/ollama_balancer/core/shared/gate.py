"""One cold-load decision at a time per model, fleet-wide (orchestration, any SharedState).

A burst for a model resident nowhere reaches several replicas at once; each
would route it to a cold pod and start its own load.  The replica that wants
to start a load takes the model's short lock, refreshes its view (so it sees
loads other replicas started a moment ago), routes again, acquires (recording
its load) and unlocks.  The others wait for the lock, refresh, and find a load
in progress to join.  Faults never block a request: if the lock cannot be had
within ``wait`` seconds the decision is taken without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .protocol import SharedState

__all__ = ["load_decision"]

#: Longer than any decision (route + one acquire); short enough that a replica dying
#: while holding it delays the others by no more than this.
LOCK_TTL = 2.0
#: How often a waiter tries the lock again.
POLL = 0.01


@asynccontextmanager
async def load_decision(
    state: SharedState, model: str, owner: str, *, wait: float = 1.0, ttl: float = LOCK_TTL
) -> AsyncIterator[bool]:
    """Hold ``model``'s load lock (yields True), or give up after ``wait`` (False).

    Inside: route again on ``state.occupancy()`` and acquire with ``cold=True``."""
    deadline = time.monotonic() + wait
    got = await state.lock_load(model, owner, ttl)
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        got = await state.lock_load(model, owner, ttl)
    await state.refresh()
    try:
        yield got
    finally:
        if got:
            await state.unlock_load(model, owner)
