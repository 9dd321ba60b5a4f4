"""Polling: every backend's ``/api/ps`` and ``/api/tags``, concurrently, into the snapshot.

:class:`FleetTracker` is the one mutable cell holding the current immutable
:class:`FleetSnapshot`; discovery replaces the backend set, the poller folds
results in, the balancer's own observations (:mod:`.witness`) are counted at once,
everyone else reads ``view.snapshot``.  Changes (a pod joined or
left, a model loaded or unloaded somewhere) are reported to listeners so logs
and metrics are emitted by the caller, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ollama_wire.backend import Backend
from ollama_wire.models import parse_installed, parse_resident

from .core.fleet import BackendState, FleetSnapshot, PollResult, apply_poll
from .core.observed import Observation, observe, still_news
from .upstream import Sender, UpstreamError, describe
from .upstream.calls import get_json

__all__ = ["ChangeKind", "FleetChange", "FleetTracker", "Poller", "poll_backend"]


class ChangeKind(StrEnum):
    """What happened to a backend (the ``kind`` key of ``fleet_change`` log events and the
    label of the fleet-changes metric)."""

    JOINED = "joined"
    LEFT = "left"
    UP = "up"
    DOWN = "down"
    """``fail_threshold`` polls in a row failed (``detail``: the last error)."""
    LOADED = "loaded"
    UNLOADED = "unloaded"


@dataclass(frozen=True, slots=True)
class FleetChange:
    """One change of the fleet, for logs and metrics."""

    kind: ChangeKind
    backend: str
    model: str = ""
    detail: str = ""


Listener = Callable[[FleetChange], None]


class FleetTracker:
    """The current fleet snapshot, replaced whole by each poll and discovery change, and the
    listeners told what changed (pod joined/left/up/down, model loaded/unloaded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.snapshot = FleetSnapshot()
        self._clock = clock
        self._listeners: list[Listener] = []
        self.changed = asyncio.Event()
        #: What the balancer saw that a poll has not confirmed yet (core.observed).
        self._news: list[Observation] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, change: FleetChange) -> None:
        for listener in self._listeners:
            listener(change)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        before = set(self.snapshot.names())
        self.snapshot = self.snapshot.with_backends(backends, self._clock())
        after = set(self.snapshot.names())
        for name in sorted(after - before):
            self._emit(FleetChange(ChangeKind.JOINED, name))
        for name in sorted(before - after):
            self._emit(FleetChange(ChangeKind.LEFT, name))
        self.changed.set()

    def observe(self, fact: Observation) -> None:
        """Count what the balancer itself caused or saw now, not at the next poll."""
        old = self.snapshot.get(fact.pod)
        if old is None:
            return
        self._news.append(fact)
        self.snapshot = observe(self.snapshot, fact)
        new = self.snapshot.get(fact.pod)
        assert new is not None
        self._residency_changes(old, new)
        self.changed.set()

    def apply(self, result: PollResult, fail_threshold: int) -> None:
        old = self.snapshot.get(result.backend)
        if old is None:
            return  # the backend left while it was being polled
        self.snapshot = apply_poll(self.snapshot, result)
        if not result.error:
            # What the balancer saw after this poll began is newer than its answer.
            self._news = still_news(self._news, result.backend, result.at, self._clock())
            for fact in self._news:
                if fact.pod == result.backend:
                    self.snapshot = observe(self.snapshot, fact)
        new = self.snapshot.get(result.backend)
        assert new is not None
        if result.error:
            if old.failures < fail_threshold <= new.failures:
                self._emit(FleetChange(ChangeKind.DOWN, result.backend, detail=result.error))
            return
        if old.last_ok is None or old.failures >= fail_threshold:
            self._emit(FleetChange(ChangeKind.UP, result.backend))
        self._residency_changes(old, new)
        self.changed.set()

    def _residency_changes(self, old: BackendState, new: BackendState) -> None:
        for key in sorted(new.resident.keys() - old.resident.keys()):
            self._emit(FleetChange(ChangeKind.LOADED, new.name, new.resident[key].name))
        for key in sorted(old.resident.keys() - new.resident.keys()):
            self._emit(FleetChange(ChangeKind.UNLOADED, new.name, old.resident[key].name))


async def poll_backend(
    transport: Sender,
    backend: Backend,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    want_version: bool = False,
) -> PollResult:
    """Poll one backend; never raises (errors become ``PollResult.error``)."""
    started = clock()
    try:
        ps, tags = await asyncio.gather(
            get_json(transport, backend.url, "/api/ps", timeout=timeout),
            get_json(transport, backend.url, "/api/tags", timeout=timeout),
        )
        version = ""
        if want_version:
            doc = await get_json(transport, backend.url, "/api/version", timeout=timeout)
            version = str(doc.get("version", "")) if isinstance(doc, dict) else ""
        return PollResult(
            backend=backend.name,
            at=started,
            installed=parse_installed(list((tags or {}).get("models") or [])),
            resident=parse_resident(list((ps or {}).get("models") or [])),
            version=version,
            duration=clock() - started,
        )
    except UpstreamError as exc:
        return PollResult(backend.name, started, error=describe(exc), duration=clock() - started)
    except (ValueError, TypeError, AttributeError) as exc:  # malformed documents
        return PollResult(
            backend.name, started, error=f"malformed answer: {exc}", duration=clock() - started
        )


class Poller:
    """Polls every backend of ``view`` every ``interval`` (+ jitter) seconds."""

    def __init__(
        self,
        transport: Sender,
        view: FleetTracker,
        *,
        interval: float,
        jitter: float,
        timeout: float,
        fail_threshold: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[PollResult], None] | None = None,
    ) -> None:
        self.transport = transport
        self.view = view
        self.interval = interval
        self.jitter = jitter
        self.timeout = timeout
        self.fail_threshold = fail_threshold
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_result = on_result
        self.rounds = 0

    async def poll_all(self) -> None:
        backends = [s.backend for s in self.view.snapshot.backends]
        states = {s.name: s for s in self.view.snapshot.backends}

        async def one(b: Backend) -> None:
            state = states.get(b.name)
            want_version = state is None or not state.version or state.failures > 0
            result = await poll_backend(self.transport, b, self.timeout, self.clock, want_version)
            self.view.apply(result, self.fail_threshold)
            if self.on_result is not None:
                self.on_result(result)

        await asyncio.gather(*(one(b) for b in backends))
        self.rounds += 1

    async def run(self) -> None:
        while True:
            await self.poll_all()
            delay = self.interval * (1 + self.jitter * self.rng.random())
            self.view.changed.clear()
            # A new backend set is polled at once instead of at the next tick.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._membership_changed(), timeout=delay)

    async def _membership_changed(self) -> None:
        names = set(self.view.snapshot.names())
        while True:
            await self.view.changed.wait()
            self.view.changed.clear()
            if set(self.view.snapshot.names()) != names:
                return
