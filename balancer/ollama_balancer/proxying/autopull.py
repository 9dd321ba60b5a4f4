"""Auto-pull: a model no pod has is pulled onto the pod routing chose, once, however many
requests wait for it; they all go on (or fail) when the pull ends."""

from __future__ import annotations

import asyncio

from ollama_wire.backend import Backend
from ollama_wire.names import canonical

from ..core.errors import AttemptFailed
from ..upstream import ErrorAnswer, Sender, UpstreamError, describe
from ..upstream.calls import progress
from ..witness import Witness

__all__ = ["AutoPull"]


class AutoPull:
    """The pulls under way, per (pod, model)."""

    def __init__(
        self, transport: Sender, *, idle_timeout: float, witness: Witness | None = None
    ) -> None:
        self.transport = transport
        self.idle_timeout = idle_timeout
        self.witness = witness
        self._pulls: dict[tuple[str, str], asyncio.Task[None]] = {}

    def under_way(self, pod: str, model: str) -> bool:
        """A pull of ``model`` onto ``pod`` runs: the "load" a follower joins."""
        return (pod, model) in self._pulls

    async def pull(self, backend: Backend, model: str) -> None:
        """Pull ``model`` onto ``backend`` (or join the pull under way); the attempt fails
        with the pod's message when the pull does.  A waiter that leaves does not stop it."""
        key = (backend.name, model)
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.ensure_future(self._pull(backend, model))
            self._pulls[key] = task
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        try:
            await asyncio.shield(task)
        except ErrorAnswer as exc:
            raise AttemptFailed(
                backend.name,
                f"pull of '{model}' failed: {exc.message}",
                status=None if exc.in_stream else exc.status,
            ) from None
        except UpstreamError as exc:
            raise AttemptFailed(
                backend.name, f"pull of '{model}' failed: {describe(exc)}"
            ) from None

    async def _pull(self, backend: Backend, model: str) -> None:
        async for _ in progress(
            self.transport,
            backend.url,
            "/api/pull",
            {"model": model},
            idle_timeout=self.idle_timeout,
        ):
            pass
        if self.witness is not None:  # the pod has it now: routing need not wait for a poll
            self.witness.pulled(backend.name, canonical(model), model)
