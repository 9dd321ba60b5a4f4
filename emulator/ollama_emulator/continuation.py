"""What an emulated model says next, and where a partial answer resumes (pure).

A request ending with an ``assistant`` message asks the model to continue that
message (Ollama renders it left open, with no new assistant header; see
docs/emulator-preemption.md).  The emulated model continues the answer it
would have given without the partial: the answer is seeded by the
conversation *without* the trailing message, and when the partial is how that
answer starts, what follows is the rest of it, token for token, so a resumed
stream reads exactly like an uninterrupted one.  A partial that is not the
start of its answer (the client wrote it) gets a fresh continuation, seeded
by the partial too.  A raw ``/api/generate`` prompt has no messages: the
split between the prompt and a partial answer at its end is found by trying
the places where an answer can start (:func:`split_raw`).

The text a runner's prompt cache compares is the canonical rendering of
:func:`render_chat` (role headers, the trailing assistant message left open,
reasoning between ``<think>`` tags) followed by :func:`answer_text` of what
was generated; a continuation's prompt is therefore the original prompt plus
the partial, as with Ollama's templates.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from . import generation

__all__ = [
    "THINK_CLOSE",
    "THINK_OPEN",
    "Script",
    "Turn",
    "answer_text",
    "plan_script",
    "render_chat",
    "resume",
    "seed_text",
    "split_partial",
    "split_raw",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as the template sees it."""

    role: str
    content: str = ""
    thinking: str = ""

    @property
    def empty(self) -> bool:
        return not self.content and not self.thinking


def split_partial(turns: Sequence[Turn]) -> tuple[tuple[Turn, ...], Turn | None]:
    """The conversation and its trailing assistant message (the partial answer), if any.

    An empty trailing assistant message renders like the generation prompt
    itself, so it is no partial.
    """
    if turns and turns[-1].role == "assistant":
        partial = turns[-1]
        return tuple(turns[:-1]), None if partial.empty else partial
    return tuple(turns), None


def seed_text(turns: Iterable[Turn]) -> str:
    """The text that seeds a chat's answer (unchanged since before continuations existed)."""
    return "\n".join(f"{t.role}: {t.content}" for t in turns)


def _assistant_open(turn: Turn) -> str:
    """A trailing assistant message, written as the model would have generated it so far."""
    if not turn.thinking:
        return turn.content
    closing = THINK_CLOSE + turn.content if turn.content else ""
    return THINK_OPEN + turn.thinking + closing


def render_chat(turns: Sequence[Turn]) -> str:
    """The prompt as a runner sees it: the last assistant message left open, else a new one."""
    out: list[str] = []
    for i, turn in enumerate(turns):
        if turn.role == "assistant" and i == len(turns) - 1:
            out.append(f"<|assistant|>\n{_assistant_open(turn)}")
            return "".join(out)
        thinking = f"{THINK_OPEN}{turn.thinking}{THINK_CLOSE}" if turn.thinking else ""
        out.append(f"<|{turn.role}|>\n{thinking}{turn.content}<|end|>\n")
    out.append("<|assistant|>\n")
    return "".join(out)


def answer_text(parts: Iterable[tuple[str, str]], *, thinking_open: bool = False) -> str:
    """What generated parts add to a slot's cache, in the rendering of :func:`render_chat`."""
    out: list[str] = []
    inside = thinking_open
    for kind, token in parts:
        if kind == "thinking" and not inside:
            out.append(THINK_OPEN)
            inside = True
        elif kind != "thinking" and inside:
            out.append(THINK_CLOSE)
            inside = False
        out.append(token)
    return "".join(out)


def resume(tokens: Iterable[str], said: str) -> Iterator[str] | None:
    """The rest of ``tokens`` once ``said`` was said, or None when they do not start with it.

    A cut inside a token resumes with the rest of that token.  Tokens are read
    only as far as ``said`` goes: the rest stays lazy.
    """
    rest = iter(tokens)
    start = 0
    for token in rest:
        end = start + len(token)
        if end > len(said):
            if not token.startswith(said[start:]):
                return None
            return itertools.chain([token[len(said) - start :]], rest)
        if said[start:end] != token:
            return None
        start = end
    return iter(()) if start == len(said) else None


@dataclass(frozen=True)
class Script:
    """What the model says from where the prompt leaves off, up to a limit."""

    parts: tuple[tuple[str, str], ...]
    """``("thinking" | "content" | "tool", token)`` in order."""
    cut: bool = False
    """The limit stopped it before its natural end (``done_reason: length``)."""
    continued: bool = False
    """The prompt ended with a partial answer."""
    resumed: bool = False
    """...and the partial was the start of the model's own answer."""
    thinking_open: bool = False
    """The prompt ends inside the reasoning (a partial with reasoning and no answer yet)."""


def plan_script(
    seed: int,
    *,
    think: int,
    answer: int,
    kind: str = "content",
    partial: Turn | None = None,
    limit: int | None = None,
) -> Script:
    """What a generation seeded by ``seed`` says (reasoning, answer), resumed after ``partial``.

    A partial with answer text continues the answer without more reasoning (Ollama's
    thinking parsers start in their content state after such a prefill); a partial
    with reasoning only continues the reasoning, then answers.  ``limit`` (``num_predict``)
    counts every new token; tokens past it are never made, however long the answer.
    """
    thoughts = generation.iter_tokens(seed ^ 1, think)
    words = generation.iter_tokens(seed, answer)
    flags: dict[str, bool] = {}
    parts: Iterator[tuple[str, str]]
    if partial is None:
        parts = itertools.chain(_tagged("thinking", thoughts), _tagged(kind, words))
    elif partial.content:
        rest = resume(words, partial.content)
        flags = {"continued": True, "resumed": rest is not None}
        if rest is None:
            fresh_seed = generation.seed_for(None, str(seed), partial.content)
            count = max(1, answer - len(partial.content.split()))
            rest = generation.iter_tokens(fresh_seed, count, opening=False)
        parts = _tagged("content", rest)
    else:
        more = resume(thoughts, partial.thinking)
        flags = {"continued": True, "resumed": more is not None, "thinking_open": True}
        parts = itertools.chain(_tagged("thinking", more or iter(())), _tagged("content", words))
    taken = tuple(itertools.islice(parts, limit))
    cut = limit is not None and next(parts, None) is not None
    return Script(taken, cut=cut, **flags)


def _tagged(kind: str, tokens: Iterable[str]) -> Iterator[tuple[str, str]]:
    return ((kind, token) for token in tokens)


def split_raw(prompt: str, answer_for: Callable[[str], Iterable[str]]) -> tuple[str, str]:
    """A raw prompt split into (prompt, partial answer); the partial is empty when there is none.

    ``answer_for(text)`` is the natural answer to a raw prompt ``text``.  Only
    places where an answer's first word starts are tried, leftmost first (the
    longest partial): the answer has to begin with the rest of the prompt.
    """
    for start in range(1, len(prompt)):
        if not prompt[start].isupper():
            continue
        head = prompt[start:].split(" ", 1)[0].rstrip(".")
        if not any(word.startswith(head) for word in generation.OPENINGS):
            continue
        if resume(answer_for(prompt[:start]), prompt[start:]) is not None:
            return prompt[:start], prompt[start:]
    return prompt, ""
