"""One node's model scheduler: VRAM, runners, slots, the pending queue, eviction, keep_alive.

A faithful miniature of Ollama's ``server/sched.go`` (docs/ollama.md §4, §5):

* A loaded runner whose ``num_ctx`` matches is handed out at once (no queue);
  its ``num_parallel`` slots (:mod:`.slots`) are waited for without bound, each
  with a prompt cache (:mod:`.prompt_cache`); a request whose client left may
  hold its slot a while longer (:mod:`.sequence`).
* Anything else goes through a bounded FIFO (``max_queue``, else
  :class:`ServerBusy`) served by **one** loop that loads one model at a time.
* Before a load: at ``max_loaded_models``, or when the model does not fit the
  free VRAM (and something else is loaded), one victim is unloaded — keep-alive
  shortest first, the first idle one, or else the shortest one once it drains.
  A runner with another ``num_ctx`` is drained and reloaded.  The first model
  on an empty node always loads (partial offload shows as ``size_vram < size``).
* If the client that triggered a load goes away, the load is aborted; the
  next queued request starts it again from scratch.
* keep_alive: last writer wins; the timer runs while the runner is idle.

No HTTP here: requests are ``acquire``/``release`` calls, time comes from a
:class:`~.clock.Clock`, so tests can drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .catalogue import ModelSpec
from .clock import Clock
from .config import NodeConfig
from .prompt_cache import HostMemory, PromptCache
from .slots import SlotPool
from .stats import Stats

__all__ = ["Runner", "Scheduler", "ServerBusy"]


class ServerBusy(Exception):
    """The pending queue is full (Ollama: 503 ``server busy …``)."""


class Runner:
    """A loaded model (one llama-server process)."""

    def __init__(
        self,
        spec: ModelSpec,
        name: str,
        num_ctx: int,
        num_parallel: int,
        size: int,
        vram: int,
        cache: PromptCache | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        """``DisplayShortest`` of the name that caused the load (what ``/api/ps`` shows)."""
        self.num_ctx = num_ctx
        self.num_parallel = num_parallel
        self.size = size
        self.size_vram = vram
        self.keep_alive = 0.0
        self.expires_at_ns = 0
        self.refcount = 0
        """Requests holding this runner (waiting for a slot or generating)."""
        self.draining = False
        """Marked for unload (reload or eviction): new requests go through the queue."""
        self.idle = asyncio.Event()
        self.idle.set()
        self.slots = SlotPool(cache or PromptCache(num_parallel))
        """Its ``num_parallel`` slots, their prompt caches and the sequences running on them."""
        self._timer: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Slots busy, also with a sequence whose client already left."""
        return self.slots.busy

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self.slots.waiting

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold one slot for work that leaves the prompt cache alone (waits without bound)."""
        return self.slots.hold()

    def __repr__(self) -> str:
        return f"<Runner {self.name} ctx={self.num_ctx} ref={self.refcount} busy={self.in_flight}>"


@dataclass(eq=False)
class _Pending:
    spec: ModelSpec
    name: str
    num_ctx: int
    keep_alive: float | None
    future: asyncio.Future[Runner] = field(repr=False)


class Scheduler:
    def __init__(self, config: NodeConfig, clock: Clock, stats: Stats) -> None:
        self.config = config
        self.clock = clock
        self.stats = stats
        self.runners: dict[str, Runner] = {}
        """Loaded runners by manifest digest (aliases share one, like Ollama's blob-path key)."""
        self.loading: ModelSpec | None = None
        """The model being loaded right now (invisible in ``/api/ps``, as in Ollama)."""
        self._pending: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max(config.max_queue, 1))
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"sched-{self.config.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        runners = list(self.runners.values())
        for runner in runners:
            self._unload(runner)
        for runner in runners:
            await runner.slots.wait_closed()

    # -- queries ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending.qsize()

    @property
    def vram_used(self) -> int:
        return sum(r.size_vram for r in self.runners.values())

    def runner_for(self, spec: ModelSpec) -> Runner | None:
        return self.runners.get(spec.digest)

    def num_ctx_for(self, spec: ModelSpec, requested: int | None) -> int:
        """The runner ``num_ctx`` a request implies: explicit, else the node default; clamped."""
        wanted = requested if requested and requested > 0 else self.config.default_num_ctx()
        return min(wanted, spec.context_length)

    def num_parallel_for(self, spec: ModelSpec) -> int:
        return 1 if spec.is_embedding else max(1, self.config.num_parallel)

    # -- requests --------------------------------------------------------------

    async def acquire(
        self,
        spec: ModelSpec,
        name: str,
        *,
        num_ctx: int | None = None,
        keep_alive: float | None = None,
    ) -> Runner:
        """A runner for ``spec`` with a reference held; pair with :meth:`release`.

        Raises :class:`ServerBusy` when the pending queue is full.  Cancelling
        the caller (client disconnect) withdraws the request, aborting a load
        it triggered.
        """
        ctx = self.num_ctx_for(spec, num_ctx)
        runner = self.runners.get(spec.digest)
        if runner is not None and not runner.draining and runner.num_ctx == ctx:
            self._hand_out(runner, keep_alive, fresh=False)
            return runner
        pending = _Pending(spec, name, ctx, keep_alive, asyncio.get_running_loop().create_future())
        try:
            self._pending.put_nowait(pending)
        except asyncio.QueueFull:
            self.stats.rejected_busy += 1
            raise ServerBusy from None
        try:
            return await pending.future
        except asyncio.CancelledError:
            # Handed out just as the client left: give the reference back.
            fut = pending.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise

    @contextlib.asynccontextmanager
    async def use(
        self,
        spec: ModelSpec,
        name: str,
        *,
        num_ctx: int | None = None,
        keep_alive: float | None = None,
    ) -> AsyncIterator[Runner]:
        runner = await self.acquire(spec, name, num_ctx=num_ctx, keep_alive=keep_alive)
        try:
            yield runner
        finally:
            self.release(runner)

    def release(self, runner: Runner) -> None:
        runner.refcount -= 1
        if runner.refcount > 0:
            return
        runner.idle.set()
        if self.runners.get(runner.spec.digest) is not runner:
            return
        runner.expires_at_ns = self.clock.deadline_ns(runner.keep_alive)
        self._arm_timer(runner)

    def expire(self, spec: ModelSpec) -> None:
        """``keep_alive: 0`` on a load-only request: unload now, or as soon as it is idle."""
        runner = self.runners.get(spec.digest)
        if runner is None:
            return
        runner.keep_alive = 0.0
        runner.expires_at_ns = self.clock.wall_ns()
        if runner.refcount == 0:
            self._unload(runner)

    def preload(self, spec: ModelSpec, name: str, keep_alive: float) -> Runner:
        """Make ``spec`` resident instantly (start-up state), ignoring limits."""
        ctx = self.num_ctx_for(spec, None)
        runner = self._new_runner(spec, name, ctx)
        runner.keep_alive = keep_alive
        self.runners[spec.digest] = runner
        runner.expires_at_ns = self.clock.deadline_ns(keep_alive)
        self._arm_timer(runner)
        return runner

    # -- internals -------------------------------------------------------------

    def _hand_out(self, runner: Runner, keep_alive: float | None, *, fresh: bool) -> None:
        runner.refcount += 1
        runner.idle.clear()
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        if keep_alive is not None:
            runner.keep_alive = keep_alive  # last writer wins
        if fresh:
            runner.expires_at_ns = self.clock.deadline_ns(runner.keep_alive)

    def _arm_timer(self, runner: Runner) -> None:
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        if math.isinf(runner.keep_alive):
            return
        if runner.keep_alive <= 0:
            self._unload(runner)
            return
        runner._timer = asyncio.create_task(self._expire_later(runner, runner.keep_alive))

    async def _expire_later(self, runner: Runner, seconds: float) -> None:
        await self.clock.sleep(seconds)
        runner._timer = None
        if runner.refcount == 0 and self.runners.get(runner.spec.digest) is runner:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.spec.digest) is runner:
            del self.runners[runner.spec.digest]
            self.stats.unloads += 1
        runner.slots.close()  # the process is gone, and a cancelled request's slot with it
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        runner.expires_at_ns = self.clock.wall_ns()

    def _new_runner(self, spec: ModelSpec, name: str, num_ctx: int) -> Runner:
        parallel = self.num_parallel_for(spec)
        size = spec.vram_bytes(num_ctx, parallel)
        free = max(0, self.config.vram_bytes - self.vram_used)
        memory = HostMemory(
            self.config.prompt_cache_ram, spec.kv_bytes_per_token, num_ctx * parallel
        )
        cache = PromptCache(parallel, similarity=self.config.slot_prompt_similarity, memory=memory)
        return Runner(spec, name, num_ctx, parallel, size, min(size, free), cache)

    async def _loop(self) -> None:
        while True:
            pending = await self._pending.get()
            if pending.future.done():
                continue  # the client went away while queued
            try:
                await self._schedule(pending)
            except Exception as exc:  # pragma: no cover - a bug, surface it to the client
                if not pending.future.done():
                    pending.future.set_exception(exc)

    async def _until(self, waitable: asyncio.Future[None] | asyncio.Event, p: _Pending) -> bool:
        """Wait for ``waitable`` unless the pending request is withdrawn first (returns False)."""
        if isinstance(waitable, asyncio.Event):
            if waitable.is_set():
                return True
            task: asyncio.Future[Any] = asyncio.ensure_future(waitable.wait())
        else:
            task = waitable
        try:
            await asyncio.wait([task, p.future], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return task.done() and not task.cancelled()

    async def _schedule(self, p: _Pending) -> None:
        while not p.future.done():
            runner = self.runners.get(p.spec.digest)
            if runner is not None:
                if not runner.draining and runner.num_ctx == p.num_ctx:
                    self._hand_out(runner, p.keep_alive, fresh=False)
                    p.future.set_result(runner)
                    return
                # Another num_ctx: drain in-flight requests, then reload.
                runner.draining = True
                if not await self._until(runner.idle, p):
                    runner.draining = False  # nobody needs the reload any more
                    return
                self._unload(runner)
                continue
            need = p.spec.vram_bytes(p.num_ctx, self.num_parallel_for(p.spec))
            loaded = len(self.runners)
            if loaded >= self.config.max_loaded_models or (
                loaded and need > self.config.vram_bytes - self.vram_used
            ):
                victim = self._victim()
                victim.draining = True
                if not await self._until(victim.idle, p):
                    victim.draining = False
                    return
                self._unload(victim)
                self.stats.evictions += 1
                continue
            await self._load(p)
            return

    def _victim(self) -> Runner:
        ranked = sorted(self.runners.values(), key=lambda r: (r.keep_alive, r.spec.digest))
        for runner in ranked:
            if runner.refcount == 0:
                return runner
        return ranked[0]

    async def _load(self, p: _Pending) -> None:
        self.stats.loads_started += 1
        self.loading = p.spec
        try:
            loaded = await self._until(
                asyncio.ensure_future(self.clock.sleep(p.spec.load_seconds)), p
            )
        finally:
            self.loading = None
        if not loaded:
            self.stats.loads_aborted += 1
            return
        runner = self._new_runner(p.spec, p.name, p.num_ctx)
        runner.keep_alive = self.config.keep_alive
        self.runners[p.spec.digest] = runner
        self.stats.loads_completed += 1
        self._hand_out(runner, p.keep_alive, fresh=True)
        p.future.set_result(runner)
