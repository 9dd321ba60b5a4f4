"""Execute a plan: idempotent, concurrency-limited, retried, isolated per pod.

Pods are worked on in parallel (at most ``concurrency`` at once); the actions
of one pod run in order (unload, delete, pull, load: free memory and disk
before filling them).  Every action is idempotent on Ollama's side (pulling an
installed model is a fast no-op, loading a resident one only refreshes its
keep_alive, unloading a model that is not loaded succeeds, deleting a missing
one is treated as done), so a retried or repeated plan is harmless.  One pod's
failures never delay or fail another pod's actions.
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

from .state import ACTION_ORDER, Action, ActionKind

__all__ = ["ActionObserver", "Executor", "Outcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    ok: bool
    error: str = ""
    attempts: int = 1


#: Called once per finished action (for Kubernetes Events and logs).
Report = Callable[[Outcome], None]


class ActionObserver(Protocol):
    """What the executor tells metrics (modelpool_operator.metrics implements it)."""

    def started(self, action: Action) -> None: ...

    def finished(self, action: Action, outcome: Outcome | None, seconds: float | None) -> None:
        """``outcome`` None: cancelled mid-action; ``seconds`` None: skipped, never attempted."""


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
    #: a load may legitimately take minutes (ollama-api.md §4.1 OLLAMA_LOAD_TIMEOUT is 5m)
    load_timeout: float = 600.0
    report: Report | None = None
    observer: ActionObserver | None = None

    async def run(self, actions: Sequence[Action]) -> list[Outcome]:
        by_pod: dict[str, list[Action]] = {}
        for a in actions:
            by_pod.setdefault(a.pod, []).append(a)
        gate = asyncio.Semaphore(max(1, self.concurrency))
        results = await asyncio.gather(*(self._pod(gate, acts) for acts in by_pod.values()))
        return [o for pod_outcomes in results for o in pod_outcomes]

    async def _pod(self, gate: asyncio.Semaphore, actions: list[Action]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        failed_pulls: set[str] = set()
        unreachable = ""
        async with gate:
            for a in sorted(actions, key=lambda x: ACTION_ORDER[x.kind]):
                if unreachable:
                    outcome = Outcome(a, False, f"skipped: pod unreachable ({unreachable})", 0)
                elif a.kind is ActionKind.LOAD and a.model in failed_pulls:
                    outcome = Outcome(a, False, "skipped: pull failed", 0)
                else:
                    outcome = await self._observed(a)
                    if not outcome.ok and outcome.error.startswith("unreachable"):
                        unreachable = outcome.error
                if not outcome.ok and a.kind is ActionKind.PULL:
                    failed_pulls.add(a.model)
                outcomes.append(outcome)
                if self.observer is not None and outcome.attempts == 0:
                    self.observer.finished(a, outcome, None)
                if self.report is not None:
                    self.report(outcome)
        return outcomes

    async def _observed(self, a: Action) -> Outcome:
        if self.observer is None:
            return await self._attempt(a)
        self.observer.started(a)
        begin = time.monotonic()
        outcome = None
        try:
            outcome = await self._attempt(a)
            return outcome
        finally:
            self.observer.finished(a, outcome, time.monotonic() - begin)

    async def _attempt(self, a: Action) -> Outcome:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                await self._do(a)
                return Outcome(a, True, attempts=attempt)
            except OllamaError as exc:
                prefix = "unreachable: " if isinstance(exc, OllamaUnreachable) else ""
                error = f"{prefix}{exc.message or exc}"
                if not _retryable(exc) or attempt == self.attempts:
                    log.warning("%s failed after %d attempt(s): %s", a.describe(), attempt, error)
                    return Outcome(a, False, error, attempt)
                log.info("%s failed (%s); retry in %.1fs", a.describe(), error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _do(self, a: Action) -> None:
        client = OllamaClient(self.session, a.url, timeout=self.request_timeout)
        if a.kind is ActionKind.PULL:
            last = ""
            try:
                async for progress in client.pull(a.name, idle_timeout=self.pull_idle_timeout):
                    last = str(progress.get("status", ""))
            except ValueError as exc:  # a torn NDJSON line
                raise OllamaProtocolError(f"bad pull progress line: {exc}") from exc
            # Follow the stream to its end: leaving early would cancel the download.
            if last != "success":
                raise OllamaProtocolError(f"pull stream ended at {last!r}, not 'success'")
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
