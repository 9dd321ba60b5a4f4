"""Counters a test (or ``GET /-/emulator/state``) reads to see what a node did."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["GenerationRecord", "Stats"]

#: Generations remembered for ``GET /-/emulator/generations`` (the oldest go first).
RECORDS_KEPT = 1000
#: Characters of the rendered prompt a record keeps: enough to tell conversations apart.
PROMPT_HEAD = 80


@dataclass
class GenerationRecord:
    """One generation as its runner saw it: where it ran, what the cache served, how it ended."""

    model: str
    slot: int
    """Index of the runner's slot it ran on."""
    started_at: float
    """When it got the slot, in emulated seconds of the node's clock."""
    prompt_tokens: int
    """``prompt_eval_count``: the whole prompt."""
    cached_tokens: int
    """Prompt tokens the slot's cache already held (not evaluated again)."""
    restored: bool
    """Those came back from the runner's host-memory prompt cache."""
    continuation: bool
    """The prompt ended with a partial answer to continue."""
    eval_count: int = 0
    """Tokens generated (also those nobody read after a cancel)."""
    outcome: str = "running"
    """``running``, ``completed``, ``cancelled_prefill`` or ``cancelled_decode``."""
    held_seconds: float = 0.0
    """Emulated seconds the slot was held, from its prompt to its release."""
    left_after: float | None = None
    """Emulated seconds after ``started_at`` when its client went away (None: it did not)."""
    prompt_head: str = ""
    """The first :data:`PROMPT_HEAD` characters of the rendered prompt: whose conversation it
    was (a continuation starts like its original), so a benchmark can join the slot time to
    its requests and tenants."""


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    """Requests received, by path (control endpoints excluded)."""
    generations_started: int = 0
    generations_completed: int = 0
    generations_cancelled: int = 0
    """Client went away while waiting for a slot or while its slot worked (counted when the
    slot is free again)."""
    generations_cancelled_prefill: int = 0
    """...of which while the prompt was processed (the slot stayed busy a while)."""
    generations_cancelled_decode: int = 0
    """...of which while tokens were generated."""
    prompt_tokens: int = 0
    """Prompt tokens of the generations started."""
    prompt_tokens_cached: int = 0
    """...of which a slot's prompt cache already held."""
    continuations: int = 0
    """Generations whose prompt ended with a partial answer (a trailing assistant message)."""
    continuation_prompt_tokens: int = 0
    continuation_cached_tokens: int = 0
    """Prompt tokens of continuations, and those their slot's cache held: the cache hit."""
    loads_started: int = 0
    loads_completed: int = 0
    loads_aborted: int = 0
    """The client that triggered the load disconnected before it finished."""
    unloads: int = 0
    evictions: int = 0
    """Unloads done to make room for another model."""
    rejected_busy: int = 0
    """503 ``server busy`` answers (pending queue full)."""
    pulls_started: int = 0
    pulls_completed: int = 0
    downloads_started: int = 0
    """Blob downloads actually started; concurrent pulls of one model share one."""
    faults_injected: int = 0
    generations: deque[GenerationRecord] = field(
        default_factory=lambda: deque(maxlen=RECORDS_KEPT), repr=False
    )
    """The last generations started, oldest first (``GET /-/emulator/generations``)."""

    def snapshot(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "generations"}
        doc["requests"] = dict(self.requests)
        return doc

    def records(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.generations]
