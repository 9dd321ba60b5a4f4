"""Execute actions against Ollama: idempotent, retried, with verdicts never retried.

Every action is idempotent on Ollama's side (pulling an installed model is a
fast no-op, loading a resident one only refreshes its keep_alive, unloading a
model that is not loaded succeeds, deleting a missing one is treated as done),
so a retried or repeated action is harmless.  Transient failures (a pod that
does not answer, 5xx, 429, a torn pull stream) are retried with backoff; a
verdict (see :mod:`.verdicts`) ends the action at once and is reported as such.

:meth:`Executor.run_one` does one action; the per-pod ordering and concurrency
live in :mod:`.lanes`.  :meth:`Executor.run` runs a batch through a private
:class:`~.lanes.Lanes`, for callers without a long-lived one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ollama_wire.client import (
    OllamaClient,
    OllamaError,
    OllamaProtocolError,
    OllamaStatusError,
    OllamaUnreachable,
)

from .lanes import Lanes, Outcome, Progress, Ticket
from .plan import format_bytes
from .state import Action, ActionKind
from .verdicts import verdict

__all__ = ["ActionObserver", "Executor", "Outcome", "TooLarge"]

log = logging.getLogger(__name__)

#: Called once per finished action (for Kubernetes Events and logs).
Report = Callable[[Outcome], None]


class ActionObserver(Protocol):
    """What the executor tells metrics (modelpool_operator.metrics implements it)."""

    def started(self, action: Action) -> None: ...

    def finished(self, action: Action, outcome: Outcome | None, seconds: float | None) -> None:
        """``outcome`` None: cancelled; ``seconds`` None: never attempted."""


#: Outcomes of actions nobody wants any more (withdrawn, or the operator stopping):
#: cancelled, not skipped, for metrics.
_CANCELLED = ("withdrawn", "operator stopping", "cancelled")


class TooLarge(OllamaError):
    """A pull abandoned because Ollama's progress showed the model cannot fit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the model is at least {format_bytes(size)}, more than the "
            f"{format_bytes(limit)} of VRAM it was placed in; pull abandoned",
        )
        self.size = size


def _retryable(exc: OllamaError) -> bool:
    # 4xx is a verdict (invalid name, model not found): asking again changes nothing.
    if isinstance(exc, OllamaStatusError):
        return exc.status >= 500 or exc.status == 429
    return True  # unreachable, a torn answer, or an error line inside a pull stream


@dataclass
class Executor:
    session: aiohttp.ClientSession
    concurrency: int = 4
    #: attempts per action, including the first
    attempts: int = 3
    #: first retry delay in seconds; doubles per attempt
    backoff: float = 1.0
    backoff_max: float = 30.0
    request_timeout: float = 5.0
    #: a pull stream that is silent this long is dead (progress lines arrive every ~second)
    pull_idle_timeout: float = 300.0
    #: a load may legitimately take minutes (docs/ollama.md §5.1: OLLAMA_LOAD_TIMEOUT is 5m)
    load_timeout: float = 600.0
    report: Report | None = None
    observer: ActionObserver | None = None

    async def run(self, actions: Sequence[Action]) -> list[Outcome]:
        """Run a batch with the lanes' rules (per pod: pulls before the loads that need
        them, one load at a time); outcomes in completion order."""
        lanes = Lanes(self.run_one, pulls_per_pod=2, pulls_total=self.concurrency, unrun=self.unrun)
        outcomes: list[Outcome] = []

        def done(ticket: Ticket) -> None:
            if ticket.outcome is not None:
                outcomes.append(ticket.outcome)
                if self.report is not None:
                    self.report(ticket.outcome)

        tickets = lanes.submit_all(list(actions), "batch", done)
        try:
            await asyncio.gather(*(t.future for t in tickets))
        finally:
            # Cancelled: stop what runs (a pull resumes later on Ollama's side), so no
            # action outlives the batch.
            await lanes.close()
        return outcomes

    def unrun(self, outcome: Outcome) -> None:
        """An action the lanes ended without running it (skipped, withdrawn, stopping)."""
        if self.observer is None:
            return
        cancelled = outcome.error.startswith(_CANCELLED)
        self.observer.finished(outcome.action, None if cancelled else outcome, None)

    async def run_one(self, a: Action, progress: Progress | None = None) -> Outcome:
        if self.observer is None:
            return await self._attempts(a, progress)
        self.observer.started(a)
        begin = time.monotonic()
        outcome = None
        try:
            outcome = await self._attempts(a, progress)
            return outcome
        finally:
            self.observer.finished(a, outcome, time.monotonic() - begin)

    async def _attempts(self, a: Action, progress: Progress | None) -> Outcome:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                await self._do(a, progress)
                return Outcome(a, True, attempts=attempt)
            except TooLarge as exc:
                log.warning("%s: %s", a.describe(), exc.message)
                return Outcome(a, False, exc.message, attempt, size=exc.size)
            except OllamaError as exc:
                prefix = "unreachable: " if isinstance(exc, OllamaUnreachable) else ""
                error = f"{prefix}{exc.message or exc}"
                status = exc.status if isinstance(exc, OllamaStatusError) else None
                final = verdict(a.kind, status, exc.message)
                if final or not _retryable(exc) or attempt == self.attempts:
                    log.warning("%s failed after %d attempt(s): %s", a.describe(), attempt, error)
                    return Outcome(a, False, error, attempt, verdict=final)
                log.info("%s failed (%s); retry in %.1fs", a.describe(), error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _do(self, a: Action, progress: Progress | None) -> None:
        client = OllamaClient(self.session, a.url, timeout=self.request_timeout)
        if a.kind is ActionKind.PULL:
            await self._pull(client, a, progress)
        elif a.kind is ActionKind.LOAD:
            await client.load(
                a.name,
                keep_alive=a.keep_alive,
                options=dict(a.options),
                embedding=a.embedding,
                timeout=self.load_timeout,
            )
        else:
            # 404 on unload (the model is not even on disk) or delete: already gone,
            # which is what was asked for.
            try:
                if a.kind is ActionKind.UNLOAD:
                    await client.unload(a.name, embedding=a.embedding)
                else:
                    await client.delete(a.name)
            except OllamaStatusError as exc:
                if exc.status != 404:
                    raise

    async def _pull(self, client: OllamaClient, a: Action, progress: Progress | None) -> None:
        last = ""
        totals: dict[str, int] = {}
        done: dict[str, int] = {}
        try:
            async for line in client.pull(a.name, idle_timeout=self.pull_idle_timeout):
                last = str(line.get("status", ""))
                digest, total = line.get("digest"), line.get("total")
                if isinstance(digest, str) and isinstance(total, int):
                    totals[digest] = total
                    completed = line.get("completed")
                    done[digest] = completed if isinstance(completed, int) else 0
                    size = sum(totals.values())
                    if a.max_bytes is not None and size > a.max_bytes:
                        # Leaving the stream cancels the download (Ollama keeps the
                        # partial blob for a later resume).
                        raise TooLarge(size, a.max_bytes)
                    if progress is not None:
                        progress(sum(done.values()), size)
        except ValueError as exc:  # a torn NDJSON line
            raise OllamaProtocolError(f"bad pull progress line: {exc}") from exc
        # Follow the stream to its end: leaving early would cancel the download.
        if last != "success":
            raise OllamaProtocolError(f"pull stream ended at {last!r}, not 'success'")
