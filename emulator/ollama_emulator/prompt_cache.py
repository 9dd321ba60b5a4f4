"""One runner's prompt cache: what each slot holds, and llama-server's host-memory copies (pure).

llama-server (Ollama 0.30 and later) keeps, in every slot, the tokens it last
evaluated: the prompt and the tokens generated, also those of a request
cancelled half way.  A new request takes a free slot this way
(``get_available_slot``, docs/emulator-preemption.md):

1. the free slot whose cache shares the longest common prefix with the
   prompt, if that prefix is more than ``similarity`` (0.1) of the prompt;
2. otherwise the least recently used free slot.

It then re-evaluates only the prompt past the common prefix, and always at
least its last token.  With the host-memory cache on (``--cache-ram``, 8192 MiB
by default), a slot taken by rule 2, or by rule 1 while keeping less than half
of its cache, first saves its cache to host memory and then loads the saved
prompt that serves the new one best (sharing at least a quarter of that saved
prompt and more than the slot's own cache); and whenever a request starts, the
idle slots are saved too.  Saved prompts are dropped oldest first beyond the
memory budget.

Texts stand for token sequences: a common prefix is measured in characters of
the rendered prompt (:mod:`.continuation`) and converted to tokens in
proportion (:func:`cached_tokens`).  Loading a saved prompt is free here; in
llama-server it is a copy from host to device memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .generation import count_tokens

__all__ = [
    "HostMemory",
    "Placement",
    "PromptCache",
    "Slot",
    "cached_tokens",
    "common_prefix",
]


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, in time proportional to it.

    Galloping over slices (compared at C speed), then halving the last gap:
    prompts that differ after their first words cost next to nothing.
    """
    n = min(len(a), len(b))
    low, step = 0, 16  # a[:low] == b[:low]
    while True:
        high = min(n, low + step)
        if a[low:high] != b[low:high]:
            break
        if high == n:
            return n
        low, step = high, step * 2
    while high - low > 1:  # a[low:high] != b[low:high]
        mid = (low + high) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    return low


def cached_tokens(prompt_tokens: int, prompt_chars: int, common: int) -> int:
    """Prompt tokens a slot's cache serves: in proportion to the characters shared.

    At least one token is always evaluated again (a runner needs the last
    prompt token's logits to sample from), so at most ``prompt_tokens - 1``.
    """
    if prompt_tokens <= 1 or prompt_chars <= 0:
        return 0
    return min(prompt_tokens - 1, prompt_tokens * min(common, prompt_chars) // prompt_chars)


@dataclass
class Slot:
    """One of a runner's ``num_parallel`` sequences and the text its cache holds."""

    index: int
    text: str = ""
    busy: bool = False
    last_used: int = -1
    """Release order (larger is more recent); -1 = never used."""


@dataclass(frozen=True)
class Placement:
    """Where a request runs and how much of its prompt is already evaluated there."""

    slot: int
    common: int
    """Characters of the rendered prompt the slot's cache holds."""
    restored: bool = False
    """The shared prefix came back from host memory."""


class HostMemory:
    """llama-server's ``server_prompt_cache``: saved slot caches, oldest first."""

    def __init__(self, budget_bytes: int, bytes_per_token: int, min_tokens: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes_per_token = bytes_per_token
        self.min_tokens = min_tokens
        """The token limit llama-server starts from (its whole context, all slots)."""
        self.entries: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def tokens(self) -> int:
        return sum(count_tokens(text) for text in self.entries)

    def save(self, text: str) -> None:
        """``alloc``: nothing when already held whole; drops what the new text contains."""
        if not self.enabled or not text:
            return
        if any(entry.startswith(text) for entry in self.entries):
            return
        self.entries = [e for e in self.entries if not text.startswith(e)]
        self.entries.append(text)
        self._trim()

    def load(self, current: str, prompt: str) -> str | None:
        """The saved text that serves ``prompt`` better than ``current``, taken out of memory."""
        if not self.enabled or not prompt:
            return None
        base = common_prefix(current, prompt)
        keep_best = base / len(current) if current else -1.0
        sim_best = base / len(prompt)
        best: int | None = None
        for i, entry in enumerate(self.entries):
            if not prompt.startswith(entry[: len(entry) // 4]):
                continue  # cannot keep a quarter of it: skip the exact measure
            common = common_prefix(entry, prompt)
            keep = common / len(entry)
            sim = common / len(prompt)
            if keep < 0.25:  # llama-server will not trash most of a large prompt
                continue
            if keep_best < keep and sim_best < sim:
                keep_best, sim_best, best = keep, sim, i
        if best is None:
            return None
        return self.entries.pop(best)

    def _trim(self) -> None:
        # ``update``: oldest first, at least one entry stays.  The byte budget binds
        # (llama-server's token limit is then never the tighter one); without a KV
        # size per token, the token limit alone does: the runner's whole context.
        if self.bytes_per_token:
            limit = self.budget_bytes // self.bytes_per_token
        else:
            limit = self.min_tokens
        total = self.tokens()
        while len(self.entries) > 1 and total > limit:
            total -= count_tokens(self.entries.pop(0))


class PromptCache:
    """The slots of one runner and what their caches hold (no waiting here: see ``slots.py``)."""

    def __init__(
        self, num_slots: int, *, similarity: float = 0.1, memory: HostMemory | None = None
    ) -> None:
        self.slots = [Slot(i) for i in range(num_slots)]
        self.similarity = similarity
        self.memory = memory or HostMemory(0, 0, 0)
        self._uses = 0

    @property
    def free(self) -> int:
        return sum(1 for s in self.slots if not s.busy)

    def place(self, prompt: str | None) -> Placement:
        """Take a free slot for ``prompt`` (None: a request that does not use the cache)."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise RuntimeError("no free slot")  # the caller waits for one first
        text = prompt or ""
        slot, save = self._choose(free, text)
        restored = False
        if save and prompt is not None and self.memory.enabled:
            self.memory.save(slot.text)
            loaded = self.memory.load(slot.text, text)
            if loaded is not None:
                slot.text, restored = loaded, True
        slot.busy = True
        if prompt is not None:
            for idle in self._idle():
                self.memory.save(idle.text)
        return Placement(slot.index, common_prefix(slot.text, text), restored)

    def release(self, index: int, text: str | None = None) -> None:
        """The request on slot ``index`` ended; its cache now holds ``text`` (None: unchanged)."""
        slot = self.slots[index]
        if text is not None:
            slot.text = text
        slot.busy = False
        self._uses += 1
        slot.last_used = self._uses

    def _idle(self) -> Iterable[Slot]:
        return (s for s in self.slots if not s.busy)

    def _choose(self, free: list[Slot], prompt: str) -> tuple[Slot, bool]:
        """``get_available_slot``: (slot, whether its cache goes to host memory first)."""
        if self.similarity > 0 and prompt:
            best: Slot | None = None
            best_common = 0
            needed = prompt[: int(self.similarity * len(prompt)) + 1]
            for slot in free:
                if not slot.text or not slot.text.startswith(needed):
                    continue  # shares too little to be chosen for its cache
                common = common_prefix(slot.text, prompt)
                if common / len(prompt) > max(self.similarity, best_common / len(prompt)):
                    best, best_common = slot, common
            if best is not None:
                return best, best_common / len(best.text) < 0.5
        lru = free[0]
        for slot in free[1:]:
            if slot.last_used <= lru.last_used:  # llama-server: the last of equals wins
                lru = slot
        return lru, True
