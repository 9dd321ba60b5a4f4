"""When a generation whose client went away lets go of its slot (pure).

Ollama (0.30 and later) runs GGUF models in llama-server; its own per-runner
semaphore is released the moment the client's context is cancelled, but the
slot inside llama-server stays busy until llama-server notices the closed
connection and processes a cancel task (docs/emulator-preemption.md):

* **While the prompt is processed** no result is sent, so its HTTP thread only
  looks at the connection when a wait for results times out, every
  ``poll`` seconds (``HTTP_POLLING_SECONDS`` = 1).  The cancel it then posts
  is handled between two decode steps, and a prompt is decoded ``num_batch``
  tokens per step, so the slot is let go at the end of the step in progress
  (a prompt shorter than one step runs to its end).  A prompt that ends
  before the next poll produces its first token, and that token's write is
  what reveals the closed connection, as during generation.
* **While tokens are generated** the closed connection is seen when the next
  token is written; the step already started produces one more token, then
  the slot is free: about one token's time.

Ollama's Go runners (before 0.30) only noticed when sending the first token
(``flushPending`` finds ``seq.quit`` closed): that is ``poll = inf`` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TOKENS_AFTER_NOTICE", "PrefillCut", "prefill_cut"]

TOKENS_AFTER_NOTICE = 1
"""Tokens a slot still generates after the runner saw the client go (the step in flight)."""


@dataclass(frozen=True)
class PrefillCut:
    """A prompt whose processing stops early because its client went away."""

    at: float
    """Seconds after the prompt processing began when the slot is free again."""
    processed: int
    """Prompt tokens evaluated by then (they stay in the slot's cache)."""


def prefill_cut(
    left: float, *, tokens: int, rate: float, batch: int, poll: float
) -> PrefillCut | None:
    """Where the processing of ``tokens`` prompt tokens stops when its client left at ``left``.

    ``rate`` is in tokens per second, ``left`` in seconds after the processing
    began.  None means the prompt is processed to its end and the cut happens
    like one during generation, at the first token.
    """
    prefill = tokens / rate
    if math.isinf(poll) or poll <= 0:
        return None
    noticed = (math.floor(left / poll) + 1) * poll
    if noticed >= prefill:
        return None
    step = max(1, batch) / rate
    steps = math.ceil(noticed / step - 1e-9)
    processed = min(tokens, steps * max(1, batch))
    return PrefillCut(at=min(prefill, steps * step), processed=processed)
