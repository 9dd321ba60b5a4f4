"""How many tokens a request will cost, before it runs (pure).

Fair share between tenants is measured in tokens (:mod:`.queueing`), so a
request's cost is needed when it arrives, long before Ollama reports
``prompt_eval_count`` and ``eval_count``.  The estimate is deliberately cheap:

* **prompt**: characters of the text the model will read, divided by 4 (the
  usual rule of thumb for English with BPE tokenizers), plus
  :data:`IMAGE_TOKENS` per image; tool definitions count by their JSON length;
* **output**: the request's own limit (Ollama ``options.num_predict``, OpenAI
  ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``,
  Anthropic ``max_tokens``), else ``default_output``; embeddings produce none.

It is then corrected with what Ollama reported for earlier requests of the
same tenant and model (:class:`TokenCorrection`): an exponentially weighted
mean of *reported / estimated*, kept apart for the prompt (a property of the
model's tokenizer and the tenant's language) and the output (how far answers
stop short of the limit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_DECODE_SECONDS",
    "DEFAULT_PREFILL_SECONDS",
    "IMAGE_TOKENS",
    "RateBook",
    "TokenCorrection",
    "TokenEstimate",
    "estimate_tokens",
]

CHARS_PER_TOKEN = 4
#: Tokens one image costs a vision model (LLaVA's 24 × 24 CLIP patches).
IMAGE_TOKENS = 576
#: Output assumed when a request sets no limit (Ollama's own num_predict default is unbounded).
DEFAULT_OUTPUT = 256
_ALPHA = 0.2  # EWMA weight of the newest report
_FACTOR_BOUNDS = (0.1, 10.0)  # a correction never moves an estimate by more than 10×


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    prompt: int
    output: int

    @property
    def total(self) -> int:
        """At least 1: every request costs something in the fair-share clock."""
        return max(1, self.prompt + self.output)


def estimate_tokens(
    doc: Mapping[str, Any], path: str = "", default_output: int = DEFAULT_OUTPUT
) -> TokenEstimate:
    """Estimate from a parsed request body (any of the Ollama, OpenAI and Anthropic shapes)."""
    chars, images = 0, 0
    for key in ("system", "prompt", "suffix", "instructions"):
        c, i = _text(doc.get(key))
        chars, images = chars + c, images + i
    messages = doc.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping):
                c, i = _text(m.get("content"))
                chars, images = chars + c, images + i
                if isinstance(m.get("images"), list):
                    images += len(m["images"])
                if m.get("tool_calls"):
                    chars += _json_len(m["tool_calls"])
    if isinstance(doc.get("images"), list):
        images += len(doc["images"])
    if doc.get("tools"):
        chars += _json_len(doc["tools"])
    embedding = "embed" in path
    # ``input``: /api/embed, /v1/embeddings, and the OpenAI Responses API.
    if "input" in doc:
        c, i = _text(doc.get("input"))
        chars, images = chars + c, images + i
    prompt = math.ceil(chars / CHARS_PER_TOKEN) + images * IMAGE_TOKENS
    output = 0 if embedding else _output_limit(doc, default_output)
    return TokenEstimate(prompt=prompt, output=output)


def _output_limit(doc: Mapping[str, Any], default: int) -> int:
    options = doc.get("options")
    candidates: list[Any] = []
    if isinstance(options, Mapping):
        candidates.append(options.get("num_predict"))
    candidates += [doc.get(k) for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")]
    for value in candidates:
        # Ollama: -1 = unbounded, -2 = until the context is full; both mean "no limit given".
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _text(value: Any) -> tuple[int, int]:
    """(characters of text, images) in a string, a list of strings or content parts."""
    if isinstance(value, str):
        return len(value), 0
    chars, images = 0, 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if kind in ("image", "image_url", "input_image"):
                    images += 1
                elif isinstance(part.get("text"), str):
                    chars += len(part["text"])
                elif isinstance(part.get("content"), str | list):  # tool_result blocks
                    c, i = _text(part["content"])
                    chars, images = chars + c, images + i
                elif isinstance(part.get("input"), Mapping):  # tool_use blocks
                    chars += _json_len(part["input"])
    return chars, images


def _json_len(value: Any) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return 0


class TokenCorrection:
    """Per (tenant, model) correction of estimates by Ollama's reported counts (explicit state)."""

    def __init__(self, alpha: float = _ALPHA, max_entries: int = 8192) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        # Tenants may come from a client header: bound the memory they can claim.
        self.max_entries = max_entries
        # (tenant, model, "prompt" | "output") -> reported / estimated
        self._factors: dict[tuple[str, str, str], float] = {}

    def factors(self, tenant: str, model: str) -> tuple[float, float]:
        """(prompt, output) factors; 1.0 until something was learned."""
        return (
            self._factors.get((tenant, model, "prompt"), 1.0),
            self._factors.get((tenant, model, "output"), 1.0),
        )

    def correct(self, tenant: str, model: str, raw: TokenEstimate) -> TokenEstimate:
        fp, fo = self.factors(tenant, model)
        return TokenEstimate(round(raw.prompt * fp), round(raw.output * fo))

    def learn(
        self,
        tenant: str,
        model: str,
        raw: TokenEstimate,
        prompt_eval_count: int | None,
        eval_count: int | None,
    ) -> None:
        """Fold one finished request in: ``raw`` is the *uncorrected* estimate made for it.

        A missing count (an error, an interrupted stream) teaches nothing about its part.
        """
        if prompt_eval_count is not None and raw.prompt > 0:
            self._mix((tenant, model, "prompt"), prompt_eval_count / raw.prompt)
        if eval_count is not None and raw.output > 0:
            self._mix((tenant, model, "output"), eval_count / raw.output)

    def _mix(self, key: tuple[str, str, str], ratio: float) -> None:
        lo, hi = _FACTOR_BOUNDS
        ratio = min(hi, max(lo, ratio))
        old = self._factors.pop(key, None)
        self._factors[key] = ratio if old is None else old + self.alpha * (ratio - old)
        while len(self._factors) > self.max_entries:  # least recently taught goes first
            del self._factors[next(iter(self._factors))]


#: Until a model's rates are measured: Ollama on a mid-range GPU reads a prompt at about
#: 2000 tokens/s and writes about 40 tokens/s for a 7–8B model (what the emulator plays).
DEFAULT_PREFILL_SECONDS = 1 / 2000
DEFAULT_DECODE_SECONDS = 1 / 40


class RateBook:
    """Per model, seconds per prompt token and per generated token, learned from Ollama's
    final metrics (``prompt_eval_duration / prompt_eval_count`` is too fast when the prompt
    cache served part of the prompt, so only cold-enough prompts teach it; explicit state).

    Turns a :class:`TokenEstimate` into the slot-seconds the scheduler charges and orders by.
    """

    def __init__(self, alpha: float = _ALPHA, max_entries: int = 4096) -> None:
        self.alpha = alpha
        self.max_entries = max_entries
        self._prefill: dict[str, float] = {}
        self._decode: dict[str, float] = {}

    def seconds(self, model: str, estimate: TokenEstimate) -> float:
        """Expected slot-seconds of a request of ``model`` with this token estimate."""
        prefill = self._prefill.get(model, DEFAULT_PREFILL_SECONDS)
        decode = self._decode.get(model, DEFAULT_DECODE_SECONDS)
        return estimate.prompt * prefill + estimate.output * decode

    def knows(self, model: str) -> bool:
        """Whether an answer of ``model`` has taught its generation rate yet."""
        return model in self._decode

    def decode_seconds(self, model: str) -> float:
        return self._decode.get(model, DEFAULT_DECODE_SECONDS)

    def learn(
        self,
        model: str,
        prompt_count: int | None,
        prompt_ns: int | None,
        eval_count: int | None,
        eval_ns: int | None,
    ) -> None:
        if eval_count and eval_ns and eval_count >= 8:
            self._mix(self._decode, model, eval_ns / 1e9 / eval_count)
        # A prompt mostly served from the cache reports a tiny duration for its whole count.
        if prompt_count and prompt_ns and prompt_count >= 64:
            rate = prompt_ns / 1e9 / prompt_count
            if rate >= self._prefill.get(model, DEFAULT_PREFILL_SECONDS) / 4:
                self._mix(self._prefill, model, rate)

    def _mix(self, table: dict[str, float], model: str, value: float) -> None:
        old = table.pop(model, None)
        table[model] = value if old is None else old + self.alpha * (value - old)
        while len(table) > self.max_entries:
            del table[next(iter(table))]
