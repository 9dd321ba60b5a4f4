"""Per-pod work queues shared by every pool of the operator.

Each pool's plan hands its actions here and goes on; nothing holds a lock per
namespace or per pool.  What Ollama needs is serialised per pod:

- **memory lane** (one at a time per pod): unloads, deletes and loads.  Ollama's
  scheduler loads one model at a time anyway (docs/ollama.md §5.3); queueing here
  lets the most urgent load go next instead of whichever request came first.
- **pull lane** (``pulls_per_pod`` at once per pod, ``pulls_total`` operator-wide,
  since downloads share the registry's and the node's bandwidth).

Both lanes of a pod run side by side, so a load never waits behind an unrelated
download.  Within a lane the lowest :class:`~.state.Priority` goes first (then
first come).  Two more rules:

- a load or delete of a model waits for a queued or running pull of the same
  model on the same pod, starts the moment that pull succeeds, and fails at once
  (without being tried) if it failed;
- a pull of a model wanted only on disk does not start while the pod has
  memory-lane work queued or running: warm replicas first.

Identical actions (same pod, kind, model and options) from several pools share
one ticket.  When an action fails because its pod does not answer, the other
queued work on that pod fails at once too: the next pass observes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .state import Action, ActionKind, Activity, Priority

__all__ = ["Lanes", "Outcome", "Progress", "Ticket"]

log = logging.getLogger(__name__)

#: ``progress(completed, total)`` from a running pull
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    ok: bool
    error: str = ""
    attempts: int = 1
    #: a verdict reason (see verdicts.py): not worth retrying until the spec changes
    verdict: str | None = None
    #: the model's size as the pull's progress told it (0 = not learned)
    size: int = 0

    @property
    def unreachable(self) -> bool:
        return self.error.startswith("unreachable")


Runner = Callable[[Action, Progress], Awaitable[Outcome]]
Watcher = Callable[["Ticket"], None]
#: told about every ticket that ends without its runner being called (metrics)
Unrun = Callable[[Outcome], None]


def _identity(a: Action) -> tuple[Any, ...]:
    return (a.url, a.kind, a.model, a.keep_alive, a.options, a.embedding)


@dataclass(eq=False)
class Ticket:
    action: Action
    seq: int
    priority: int
    future: asyncio.Future[Outcome]
    deps: list[Ticket] = field(default_factory=list)
    watchers: dict[Hashable, Watcher] = field(default_factory=dict)
    running: bool = False
    #: the runner was called for it (its outcome was not made up by the lanes)
    started: bool = False
    completed: int = 0
    total: int = 0

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def outcome(self) -> Outcome | None:
        return self.future.result() if self.future.done() else None

    def activity(self) -> Activity:
        return Activity(self.action, self.running, self.completed, self.total)


class Lanes:
    def __init__(
        self,
        run: Runner,
        *,
        pulls_per_pod: int = 2,
        pulls_total: int = 4,
        unrun: Unrun | None = None,
    ) -> None:
        self._run = run
        self._unrun = unrun
        self.pulls_per_pod = max(1, pulls_per_pod)
        self.pulls_total = max(1, pulls_total)
        self._seq = itertools.count()
        self._queued: list[Ticket] = []
        self._running: set[Ticket] = set()
        self._by_identity: dict[tuple[Any, ...], Ticket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._holding = False

    # -- public --------------------------------------------------------------------
    def submit_all(self, actions: list[Action], owner: Hashable, watcher: Watcher) -> list[Ticket]:
        """Queue a whole plan before starting anything, so its order does not matter:
        the pulls are queued first (the loads find what they wait for), and nothing
        starts until every action is queued (a disk-only pull listed first does not
        slip in ahead of the plan's loads)."""
        ordered = sorted(actions, key=lambda a: a.kind is not ActionKind.PULL)
        self._holding = True
        try:
            tickets = {id(a): self.submit(a, owner, watcher) for a in ordered}
        finally:
            self._holding = False
        self._kick()
        return [tickets[id(a)] for a in actions]

    def submit(self, action: Action, owner: Hashable, watcher: Watcher) -> Ticket:
        """Queue ``action`` for ``owner`` (or join the identical queued/running one)."""
        ident = _identity(action)
        ticket = self._by_identity.get(ident)
        if ticket is None or ticket.done:
            loop = asyncio.get_running_loop()
            ticket = Ticket(action, next(self._seq), int(action.priority), loop.create_future())
            if action.kind in (ActionKind.LOAD, ActionKind.DELETE):
                ticket.deps = [
                    t
                    for t in (*self._running, *self._queued)
                    if t.action.kind is ActionKind.PULL
                    and t.action.url == action.url
                    and t.action.model == action.model
                ]
            self._by_identity[ident] = ticket
            if self._closed:
                self._finish(ticket, Outcome(action, False, "operator stopping", 0))
            else:
                self._queued.append(ticket)
        else:
            ticket.priority = min(ticket.priority, int(action.priority))
        ticket.watchers[owner] = watcher
        self._kick()
        return ticket

    def withdraw(self, ticket: Ticket, owner: Hashable) -> None:
        """``owner`` no longer wants ``ticket``; drop it if nobody does and it has not started."""
        ticket.watchers.pop(owner, None)
        if not ticket.watchers and not ticket.running and not ticket.done:
            self._queued.remove(ticket)
            self._finish(ticket, Outcome(ticket.action, False, "withdrawn", 0))
            self._kick()

    def activities(self, owner: Hashable) -> list[Activity]:
        return [t.activity() for t in (*self._running, *self._queued) if owner in t.watchers]

    async def close(self) -> None:
        """Fail everything queued and cancel what runs (a pull resumes later on Ollama's side)."""
        self._closed = True
        for t in list(self._queued):
            self._queued.remove(t)
            self._finish(t, Outcome(t.action, False, "operator stopping", 0))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- scheduling ------------------------------------------------------------------
    def _busy(self, url: str) -> tuple[bool, int]:
        memory = any(t.action.url == url and t.action.kind is not ActionKind.PULL
                     for t in self._running)  # fmt: skip
        pulls = sum(1 for t in self._running
                    if t.action.url == url and t.action.kind is ActionKind.PULL)  # fmt: skip
        return memory, pulls

    def _memory_wanted(self, url: str) -> bool:
        return any(
            t.action.url == url
            and t.action.kind is not ActionKind.PULL
            and all(d.done for d in t.deps)
            for t in (*self._running, *self._queued)
        )

    def _kick(self) -> None:
        if self._closed or self._holding:
            return
        for t in sorted(self._queued, key=lambda x: (x.priority, x.seq)):
            failed = next((d for d in t.deps if d.done and not (d.outcome and d.outcome.ok)), None)
            if failed is not None:
                err = failed.outcome.error if failed.outcome else "cancelled"
                self._queued.remove(t)
                self._finish(t, Outcome(t.action, False, f"skipped: pull failed ({err})", 0))
                continue
            if not all(d.done for d in t.deps):
                continue
            memory, pulls = self._busy(t.action.url)
            if t.action.kind is ActionKind.PULL:
                total = sum(1 for r in self._running if r.action.kind is ActionKind.PULL)
                if pulls >= self.pulls_per_pod or total >= self.pulls_total:
                    continue
                if t.priority >= Priority.DISK and self._memory_wanted(t.action.url):
                    continue  # warm replicas before disk-only copies
            elif memory:
                continue
            self._start(t)

    def _start(self, t: Ticket) -> None:
        self._queued.remove(t)
        self._running.add(t)
        t.running = t.started = True

        def progress(completed: int, total: int) -> None:
            t.completed, t.total = completed, total

        async def work() -> None:
            try:
                outcome = await self._run(t.action, progress)
            except asyncio.CancelledError:
                outcome = Outcome(t.action, False, "cancelled: operator stopping", 0)
                self._settle(t, outcome)
                raise
            except Exception as exc:  # a bug must not wedge the pod's lane
                log.exception("%s crashed", t.action.describe())
                outcome = Outcome(t.action, False, f"internal error: {exc!r}")
            self._settle(t, outcome)

        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settle(self, t: Ticket, outcome: Outcome) -> None:
        self._running.discard(t)
        t.running = False
        self._finish(t, outcome)
        if outcome.unreachable:
            for other in list(self._queued):
                if other.action.url == t.action.url:
                    self._queued.remove(other)
                    self._finish(
                        other, Outcome(other.action, False, f"skipped: {outcome.error}", 0)
                    )
        self._kick()

    def _finish(self, t: Ticket, outcome: Outcome) -> None:
        if t.future.done():
            return
        t.future.set_result(outcome)
        if not t.started and self._unrun is not None:
            try:
                self._unrun(outcome)
            except Exception:
                log.exception("unrun hook of %s failed", t.action.describe())
        if self._by_identity.get(_identity(t.action)) is t:
            del self._by_identity[_identity(t.action)]
        for watcher in list(t.watchers.values()):
            try:
                watcher(t)
            except Exception:
                log.exception("watcher of %s failed", t.action.describe())
