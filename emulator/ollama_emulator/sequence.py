"""One generation on one slot, run by the runner in a task of its own.

The request handler only reads what the sequence produces.  When the client
goes away, aiohttp cancels the handler, which tells the sequence
(:meth:`Sequence.abandon`) and returns at once, as Ollama releases its own
semaphore at once; the sequence goes on holding the slot as llama-server
would, until :mod:`.cancellation` says the runner let go of it.  What the
slot evaluated by then (prompt and tokens) stays in its cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .cancellation import TOKENS_AFTER_NOTICE, prefill_cut
from .clock import Clock
from .continuation import answer_text
from .prompt_cache import Placement, cached_tokens
from .slots import SlotPool
from .stats import PROMPT_HEAD, GenerationRecord, Stats

__all__ = ["Job", "Sequence"]

Part = tuple[str, str]


@dataclass(frozen=True)
class Job:
    """What a slot is asked to do, in emulated seconds."""

    model: str
    prompt: str
    """The rendered prompt (what the cache compares)."""
    prompt_tokens: int
    parts: tuple[Part, ...]
    """Exactly what to generate (``num_predict`` already applied)."""
    per_token: float
    """Seconds per generated token."""
    prompt_rate: float
    """Prompt tokens evaluated per second."""
    batch: int
    """Prompt tokens per decode step (``num_batch``)."""
    poll: float
    """Seconds between the runner's looks at a silent connection."""
    continuation: bool = False
    thinking_open: bool = False


class Sequence:
    """Prefill, then tokens at the model's rate; started on a slot already placed."""

    def __init__(
        self, pool: SlotPool, placement: Placement, job: Job, clock: Clock, stats: Stats
    ) -> None:
        self.pool = pool
        self.placement = placement
        self.job = job
        self.clock = clock
        self.stats = stats
        self.cached = cached_tokens(job.prompt_tokens, len(job.prompt), placement.common)
        self.prompt_eval_ns = 0
        self.eval_ns = 0
        self.produced: list[Part] = []
        self.outcome = "running"
        self._started = clock.monotonic()
        self.record = GenerationRecord(
            model=job.model,
            slot=placement.slot,
            started_at=self._started,
            prompt_tokens=job.prompt_tokens,
            cached_tokens=self.cached,
            restored=placement.restored,
            continuation=job.continuation,
            prompt_head=job.prompt[:PROMPT_HEAD],
        )
        self._left_at: float | None = None
        self._prefilling = False
        self._out: asyncio.Queue[Part | None] = asyncio.Queue()
        self._done = asyncio.Event()
        self._consumed = False
        self._phase = "cancelled_prefill"
        self._counted = False
        self._count_start()
        self.task = asyncio.create_task(self._run(), name=f"sequence-{job.model}")
        pool.track(self.task)

    async def next(self) -> Part | None:
        """The next part for the client, None at the end."""
        return await self._out.get()

    async def finished(self) -> None:
        """Wait for the slot to be released (without cancelling the sequence)."""
        await self._done.wait()

    def abandon(self) -> None:
        """The client went away now."""
        if self._left_at is None and not self._consumed:
            self._left_at = self.clock.monotonic()
            self.record.left_after = self._left_at - self._started
            if self._prefilling:
                self.task.cancel()  # wakes the prompt's sleep, see _prefill_until
            self._settle()

    def consumed(self) -> None:
        """The handler read everything up to the end: the client got its answer."""
        self._consumed = True
        self._settle()

    # -- the runner side -----------------------------------------------------

    def _count_start(self) -> None:
        stats, job = self.stats, self.job
        stats.generations_started += 1
        stats.prompt_tokens += job.prompt_tokens
        stats.prompt_tokens_cached += self.cached
        if job.continuation:
            stats.continuations += 1
            stats.continuation_prompt_tokens += job.prompt_tokens
            stats.continuation_cached_tokens += self.cached
        stats.generations.append(self.record)

    async def _run(self) -> None:
        job = self.job
        new = job.prompt_tokens - self.cached
        prefill = new / job.prompt_rate
        cache_text = job.prompt
        phase = "cancelled_prefill"
        try:
            if not await self._prefill_until(self._started + prefill):
                assert self._left_at is not None
                cut = prefill_cut(
                    self._left_at - self._started,
                    tokens=new,
                    rate=job.prompt_rate,
                    batch=job.batch,
                    poll=job.poll,
                )
                if cut is not None:
                    await self._sleep_until(self._started + cut.at)
                    kept = self.cached + cut.processed
                    cache_text = job.prompt[: len(job.prompt) * kept // max(1, job.prompt_tokens)]
                    return
                await self._sleep_until(self._started + prefill)  # unnoticed: to its end
            self.prompt_eval_ns = int(prefill * 1e9)
            if self._left_at is None:
                phase = "cancelled_decode"  # else it left during the prompt, noticed only now
            began = self.clock.monotonic()
            last: int | None = None
            for i, part in enumerate(job.parts):
                await self._sleep_until(began + (i + 1) * job.per_token)
                self.produced.append(part)
                if self._left_at is None:
                    self._out.put_nowait(part)
                elif last is None:
                    last = i + TOKENS_AFTER_NOTICE  # this token's write found the client gone
                if last is not None and i >= last:
                    break
            self.eval_ns = max(1, int(len(self.produced) * job.per_token * 1e9))
            cache_text = job.prompt + answer_text(self.produced, thinking_open=job.thinking_open)
            if self._left_at is None:
                phase = "completed"
        finally:
            self._finish(phase, cache_text)

    async def _prefill_until(self, deadline: float) -> bool:
        """Sleep until ``deadline``; False as soon as the client leaves before it.

        :meth:`abandon` wakes the sleep by cancelling this task; that one
        cancellation is taken back here, any other (the runner unloaded) goes on.
        """
        task = asyncio.current_task()
        assert task is not None
        if self._left_at is not None:
            return False  # gone before this task first ran
        self._prefilling = True
        try:
            await self._sleep_until(deadline)
        except asyncio.CancelledError:
            if self._left_at is None or task.cancelling() > 1:
                raise
            task.uncancel()
            return False
        finally:
            self._prefilling = False
        return True

    async def _sleep_until(self, deadline: float) -> None:
        # Pace against a schedule, not per-token sleeps: at small time scales each real
        # sleep overshoots and the rate would drift.
        await self.clock.sleep(deadline - self.clock.monotonic())

    def _finish(self, outcome: str, cache_text: str) -> None:
        self.outcome = self._phase = outcome
        self.record.eval_count = len(self.produced)
        self.record.held_seconds = self.clock.monotonic() - self._started
        self.pool.release(self.placement.slot, cache_text)
        self._out.put_nowait(None)
        self._done.set()
        self._settle()

    def _settle(self) -> None:
        """Count the generation once its slot is free and its client is served or gone.

        A generation the runner finished but whose answer the client did not get
        (it left while the last parts were on their way) counts as cancelled.
        """
        if self._counted or not self._done.is_set():
            return
        if self._consumed and self._phase == "completed":
            outcome = "completed"
        elif self._left_at is not None or self._consumed:
            outcome = "cancelled_decode" if self._phase == "completed" else self._phase
        else:
            return  # the handler is still reading what was produced
        self._counted = True
        self.record.outcome = outcome
        stats = self.stats
        if outcome == "completed":
            stats.generations_completed += 1
            return
        stats.generations_cancelled += 1
        if outcome == "cancelled_prefill":
            stats.generations_cancelled_prefill += 1
        else:
            stats.generations_cancelled_decode += 1
