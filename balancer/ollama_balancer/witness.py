"""The balancer's own observations, counted at once (thin I/O over :mod:`.core.observed`).

The proxy, the unloader, auto-pull and the admin fan-out tell the :class:`Witness` what
they caused or saw; it folds each fact into the fleet view (``FleetTracker.observe``) so
the next decision — routing, an unload, a load, a fan-out — counts it without waiting for
the next ``/api/ps`` poll.  An unload also tells the shared state: the copy a finished
load made is gone, on every replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from ollama_wire.durations import parse_keep_alive
from ollama_wire.jsonvalue import JsonValue

from .core.observed import Observation, Seen, expiry
from .core.shared.protocol import SharedState
from .polling import FleetTracker

__all__ = ["Witness"]


class Witness:
    """Where the balancer's own outcomes go."""

    def __init__(
        self,
        view: FleetTracker,
        shared: SharedState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.shared = shared
        self.clock = clock

    def _saw(self, seen: Seen, pod: str, model: str, name: str = "") -> None:
        self.view.observe(Observation(seen, pod, model, self.clock(), name))

    def answered(self, pod: str, model: str, name: str, keep_alive: JsonValue) -> None:
        """``pod`` began answering a request for ``model``: if the view did not have it
        resident there, the pod loaded it for this request (keep_alive as the request
        asked; a malformed one would not have been answered)."""
        state = self.view.snapshot.get(pod)
        if state is None or state.resident_model(model) is not None:
            return
        try:
            seconds = parse_keep_alive(keep_alive)
        except ValueError:
            seconds = None
        if seconds == 0:
            return  # loaded for this request only: Ollama unloads it when it ends
        expires = expiry(seconds, datetime.now(UTC))
        self.view.observe(Observation(Seen.LOADED, pod, model, self.clock(), name, expires))

    async def unloaded(self, pod: str, model: str) -> None:
        """``pod`` answered an unload of ``model`` the balancer sent: not resident there."""
        self._saw(Seen.UNLOADED, pod, model)
        await self.shared.forget_loaded(pod, model)

    def pulled(self, pod: str, model: str, name: str) -> None:
        """A pull of ``model`` onto ``pod`` ended with ``success``: installed there."""
        self._saw(Seen.PULLED, pod, model, name)

    def deleted(self, pod: str, model: str) -> None:
        """``pod`` answered a delete of ``model``: not installed there."""
        self._saw(Seen.DELETED, pod, model)

    def missing(self, pod: str, model: str) -> None:
        """``pod`` answered a request for ``model`` with 404: it does not have it."""
        self._saw(Seen.MISSING, pod, model)
