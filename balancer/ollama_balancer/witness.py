"""The balancer's own observations, counted at once (thin I/O over :mod:`.core.observed`).

The proxy and the unloader tell the :class:`Witness` what they caused or saw; it folds
each fact into the fleet view (``FleetTracker.observe``) so the next decision — routing,
an unload, a load — counts it without waiting for the next ``/api/ps`` poll.  This is the
one place where the balancer writes what it saw into the view; what else it could count
this way (pulls, deletes, a pod that refused) joins here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from ollama_wire.durations import parse_keep_alive
from ollama_wire.jsonvalue import JsonValue

from .core.observed import Observation, Seen, expiry
from .polling import FleetTracker

__all__ = ["Witness"]


class Witness:
    """Where the balancer's own outcomes go."""

    def __init__(self, view: FleetTracker, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.clock = clock

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

    def unloaded(self, pod: str, model: str) -> None:
        """``pod`` answered an unload of ``model`` the balancer sent: not resident there."""
        self.view.observe(Observation(Seen.UNLOADED, pod, model, self.clock()))
