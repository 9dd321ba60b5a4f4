"""Shared inference core: validate a request, get a runner, play tokens back at the model's rate.

Used by the native handlers (``handlers.py``) and the OpenAI ones
(``openai.py``), exactly as Ollama's OpenAI middleware rewrites ``/v1`` bodies
into native ones.  Timing fields are emulated nanoseconds (see ``clock.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from ollama_wire.durations import KeepAliveError, parse_keep_alive
from ollama_wire.errors import MSG_SERVER_BUSY

from . import generation
from .continuation import Turn, plan_script, render_chat, seed_text, split_partial
from .registry import Library, LibraryEntry
from .scheduler import Runner, ServerBusy
from .sequence import Job, Sequence
from .state import NodeState
from .streams import ApiError
from .wire import metrics

__all__ = [
    "Generation",
    "GenerationPlan",
    "chat_plan",
    "check_options",
    "completion_model",
    "embed_texts",
    "embedding_model",
    "keep_alive_of",
    "schedule",
    "truncate_dimensions",
]

_INT_OPTIONS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed",
    "num_predict", "top_k", "repeat_last_n", "draft_num_predict",
}  # fmt: skip
_FLOAT_OPTIONS = {
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty",
}  # fmt: skip


def check_options(options: Any) -> dict[str, Any]:
    """``api.Options.FromMap``: wrong types are a **500** (it happens after binding)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ApiError(
            400,
            f"json: cannot unmarshal {type(options).__name__} into Go struct field "
            "GenerateRequest.options of type map[string]interface {}",
        )
    for key, value in options.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not number:
            raise ApiError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not number:
            raise ApiError(500, f'option "{key}" must be of type float32')
        if key == "use_mmap" and not isinstance(value, bool):
            raise ApiError(500, f'option "{key}" must be of type boolean')
        if key == "stop" and not isinstance(value, list | str):
            raise ApiError(500, f'option "{key}" must be of type array')
    return dict(options)


def completion_model(library: Library, name: str, endpoint: str) -> LibraryEntry:
    """The installed model a generate or chat request names (native or OpenAI ``endpoint``)."""
    model = library.find(name) if name else None
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    if "completion" not in model.spec.capabilities:
        raise ApiError(400, f'"{name}" does not support {endpoint}')
    return model


def embedding_model(library: Library, name: str) -> LibraryEntry:
    """The installed model an embedding request names."""
    # Ollama does not check capabilities here: completion models embed too.
    model = library.find(name) if name else None
    if model is None:
        raise ApiError(404, f'model "{name}" not found, try pulling it first')
    return model


def keep_alive_of(doc: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(doc.get("keep_alive"))
    except KeepAliveError as exc:
        raise ApiError(400, str(exc)) from None


async def schedule(
    node: NodeState,
    model: LibraryEntry,
    *,
    num_ctx: int | None,
    keep_alive: float | None,
) -> Runner:
    try:
        return await node.scheduler.acquire(
            model.spec, model.display, num_ctx=num_ctx, keep_alive=keep_alive
        )
    except ServerBusy:
        raise ApiError(503, MSG_SERVER_BUSY) from None


@dataclass
class GenerationPlan:
    model: LibraryEntry
    prompt_text: str
    """The text that seeds the answer: the prompt without a trailing partial answer."""
    prompt_tokens: int
    options: dict[str, Any]
    keep_alive: float | None
    seed: int | None = None
    think_tokens: int = 0
    """Reasoning tokens played before the answer (a thinking model with ``think`` on)."""
    tool_call_tokens: int = 0
    """When > 0 the answer is a tool call this many tokens long instead of text."""
    rendered: str = ""
    """The prompt as the runner's cache sees it (``render_chat``); empty = ``prompt_text``."""
    partial: Turn | None = None
    """A partial answer the prompt ends with, to be continued."""

    @property
    def num_ctx(self) -> int | None:
        value = self.options.get("num_ctx")
        return int(value) if value is not None else None

    @property
    def num_predict(self) -> int | None:
        value = self.options.get("num_predict")
        return int(value) if value is not None and value >= 0 else None

    @property
    def prompt(self) -> str:
        return self.rendered or self.prompt_text


def chat_plan(
    model: LibraryEntry,
    turns: list[Turn],
    *,
    options: dict[str, Any],
    keep_alive: float | None,
    think_tokens: int = 0,
    tool_call_tokens: int = 0,
) -> GenerationPlan:
    """The plan of a chat; a trailing assistant message is a partial answer to continue."""
    history, partial = split_partial(turns)
    counted = [(t.role, t.thinking + t.content) for t in history]
    # The conversation's tokens, then the open answer's own tokens (no closing template):
    # a continuation reads exactly the prompt the uninterrupted request read, plus its answer.
    prompt_tokens = generation.chat_prompt_tokens(counted)
    if partial is not None:
        prompt_tokens += generation.answer_tokens(partial.thinking + partial.content)
    return GenerationPlan(
        model=model,
        prompt_text=seed_text(history),
        prompt_tokens=prompt_tokens,
        options=options,
        keep_alive=keep_alive,
        seed=options.get("seed"),
        think_tokens=think_tokens,
        tool_call_tokens=tool_call_tokens,
        rendered=render_chat(turns),
        partial=partial,
    )


@dataclass
class Generation:
    """One generation, from scheduling to the last token."""

    node: NodeState
    plan: GenerationPlan
    started: float
    """Emulated monotonic time when the handler started (Ollama: before JSON parsing)."""
    runner: Runner | None = None
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    tokens: list[str] = field(default_factory=list)
    """Answer (content) tokens so far."""
    thinking: list[str] = field(default_factory=list)
    """Reasoning tokens so far."""
    eval_count: int = 0
    """Every generated token: reasoning, answer and tool-call tokens."""
    done_reason: str = "stop"
    completed: bool = False
    sequence: Sequence | None = None
    """The runner side, once a slot was found (its record says what the cache served)."""

    async def schedule(self) -> None:
        self.runner = await schedule(
            self.node, self.plan.model, num_ctx=self.plan.num_ctx, keep_alive=self.plan.keep_alive
        )
        self.load_ns = self._ns_since(self.started)

    async def stream(self) -> AsyncGenerator[str, None]:
        """Hold a slot and yield answer tokens at the model's rate; afterwards read the metrics."""
        async with contextlib.aclosing(self.parts()) as parts:
            async for kind, token in parts:
                if kind == "content":
                    yield token

    def job(self) -> Job:
        """What the runner's slot is asked to do; ``num_predict`` counts every new token."""
        node, spec, plan = self.node, self.plan.model.spec, self.plan
        seed = generation.seed_for(plan.seed, spec.digest, plan.prompt_text)
        script = plan_script(
            seed,
            think=plan.think_tokens,
            answer=plan.tool_call_tokens or spec.response_tokens,
            kind="tool" if plan.tool_call_tokens else "content",
            partial=plan.partial,
            limit=plan.num_predict,
        )
        self.done_reason = "length" if script.cut else "stop"
        slow = node.faults.token_rate_factor
        return Job(
            model=self.runner.name if self.runner else spec.name,
            prompt=plan.prompt,
            prompt_tokens=plan.prompt_tokens,
            parts=script.parts,
            per_token=slow / spec.tokens_per_second,
            prompt_rate=spec.prompt_tokens_per_second / slow,
            batch=node.config.num_batch,
            poll=node.config.cancel_poll_seconds,
            continuation=script.continued,
            thinking_open=script.thinking_open,
        )

    async def parts(self) -> AsyncGenerator[tuple[str, str], None]:
        """``("thinking" | "content" | "tool", token)`` at the model's rate.

        Reasoning comes first, then the answer: text, or a tool call whose tokens
        are not shown (Ollama's parser hands the call over whole, see
        :attr:`tool_call_complete`).  ``num_predict`` counts all of them.  A
        client that goes away leaves the sequence to finish on its own terms
        (:mod:`.sequence`).
        """
        assert self.runner is not None, "schedule() first"
        job = self.job()
        slots = self.runner.slots
        try:
            placement = await slots.acquire(job.prompt)
        except asyncio.CancelledError:
            self.node.stats.generations_cancelled += 1  # left while waiting for a slot
            raise
        self.sequence = sequence = Sequence(slots, placement, job, self.node.clock, self.node.stats)
        try:
            while (part := await sequence.next()) is not None:
                kind, token = part
                self.eval_count += 1
                if kind == "thinking":
                    self.thinking.append(token)
                elif kind == "content":
                    self.tokens.append(token)
                yield part
            await sequence.finished()
            self.prompt_eval_ns, self.eval_ns = sequence.prompt_eval_ns, sequence.eval_ns
            self.completed = sequence.outcome == "completed"
            sequence.consumed()
        finally:
            if not self.completed:
                sequence.abandon()

    @property
    def tool_call_complete(self) -> bool:
        """A planned tool call was generated to its end (cut by ``num_predict``, it is lost)."""
        return bool(self.plan.tool_call_tokens) and self.completed and self.done_reason == "stop"

    def release(self) -> None:
        if self.runner is not None:
            self.node.scheduler.release(self.runner)
            self.runner = None

    def metrics(self) -> dict[str, int]:
        return metrics(
            total_ns=self._ns_since(self.started),
            load_ns=self.load_ns,
            prompt_eval_count=self.plan.prompt_tokens,
            prompt_eval_ns=self.prompt_eval_ns,
            eval_count=self.eval_count,
            eval_ns=self.eval_ns,
        )

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def _ns_since(self, start: float) -> int:
        return max(1, int((self.node.clock.monotonic() - start) * 1e9))


async def embed_texts(
    node: NodeState,
    model: LibraryEntry,
    texts: list[str],
    *,
    options: dict[str, Any],
    keep_alive: float | None,
    truncate: bool = True,
) -> tuple[list[list[float]], Runner, int]:
    """Embeddings of ``texts`` (runner already released) and the prompt token count."""
    num_ctx = options.get("num_ctx")
    runner = await schedule(
        node, model, num_ctx=int(num_ctx) if num_ctx else None, keep_alive=keep_alive
    )
    try:
        counts = [generation.count_tokens(t) for t in texts]
        if not truncate and any(c > runner.num_ctx for c in counts):
            raise ApiError(400, "the input length exceeds the context length")
        tokens = sum(min(c, runner.num_ctx) for c in counts)
        async with runner.slot():
            rate = model.spec.prompt_tokens_per_second / node.faults.token_rate_factor
            await node.clock.sleep(tokens / rate)
        dims = model.spec.embedding_length
        vectors = [generation.embedding(model.spec.digest, t, dims) for t in texts]
        return vectors, runner, tokens
    finally:
        node.scheduler.release(runner)


def truncate_dimensions(vector: list[float], dimensions: int | None) -> list[float]:
    """``dimensions``: keep the first N and renormalise (Matryoshka style, like Ollama)."""
    if not dimensions or dimensions >= len(vector):
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [float(f"{x / norm:.7g}") for x in cut]
