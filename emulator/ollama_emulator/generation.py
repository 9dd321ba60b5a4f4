"""Deterministic model output: tokens, token counts and embeddings (pure).

Same model + same seed (``options.seed`` / ``seed``) → same text; without a
seed the prompt itself seeds the generator, so tests are reproducible while
different prompts still get different answers.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "OPENINGS",
    "count_tokens",
    "embedding",
    "generate_tokens",
    "iter_tokens",
    "seed_for",
    "think_tokens",
    "tool_arguments",
    "tool_call_id",
]

_TEXT = """
the sky is blue because sunlight scatters off molecules in the air and shorter wavelengths
scatter more than longer ones so we see blue light from every direction during the day while
sunsets look red as light travels through more atmosphere models learn patterns from data and
answer questions with words that sound plausible a fleet of servers shares the load so that
every request finds a warm model quickly
"""
_WORDS = tuple(_TEXT.split())

OPENINGS = frozenset(w.capitalize() for w in _WORDS)
"""The words an answer can start with (its first token, without a leading space)."""


def seed_for(seed: int | None, model: str, text: str) -> int:
    """A stable 64-bit seed (Python's ``hash`` is salted per process, so use sha256)."""
    material = f"{seed}" if seed is not None else f"{model}\x00{text}"
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


def iter_tokens(seed: int, count: int, *, opening: bool = True) -> Iterator[str]:
    """The ``count`` tokens of :func:`generate_tokens`, made only as far as they are read."""
    if count <= 0:
        return  # seeding a generator costs more than the tokens of a short answer
    rng = random.Random(seed)
    previous = ""
    for i in range(count):
        word = rng.choice(_WORDS)
        if i == 0:
            word = word.capitalize() if opening else " " + word
        elif previous.endswith("."):
            word = " " + word.capitalize()
        else:
            word = " " + word
        if i == count - 1 or rng.random() < 0.08:
            word += "."
        previous = word
        yield word


def generate_tokens(seed: int, count: int, *, opening: bool = True) -> list[str]:
    """``count`` tokens forming a sentence-like text; each but the first starts with a space.

    A natural answer ends with a period on its last token, so a prefix of it
    (``num_predict`` reached, or a partial answer being continued) is the
    same tokens cut short.  ``opening=False`` gives text that continues
    something already said: its first token starts with a space too.
    """
    return list(iter_tokens(seed, count, opening=opening))


def count_tokens(text: str) -> int:
    """About four characters per token, like BPE tokenizers on English; never zero."""
    return max(1, math.ceil(len(text) / 4))


def answer_tokens(text: str) -> int:
    """Tokens of text the model itself generated (a partial answer sent back to continue):
    as many as it was generated in — a word each, its leading space included — because a
    tokenizer reads back its own output the way it wrote it."""
    return len(_WORD.findall(text))


_WORD = re.compile(r"\s*\S+")


def chat_prompt_tokens(messages: Sequence[tuple[str, str]]) -> int:
    """Prompt tokens of a chat: the contents plus a few template tokens per message."""
    return sum(count_tokens(content) + 4 for _, content in messages) + 1


def embedding(digest: str, text: str, dimensions: int) -> list[float]:
    """A unit-length float32 vector, a pure function of (model, text)."""
    rng = random.Random(seed_for(None, digest, text))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Round-trip through float32 as Ollama does, then print short like Go does.
    packed = struct.pack(f"<{dimensions}f", *(x / norm for x in raw))
    return [float(f"{x:.7g}") for x in struct.unpack(f"<{dimensions}f", packed)]


def context_ids(seed: int, count: int) -> list[int]:
    """The deprecated ``context`` of ``/api/generate``: plausible token ids, deterministic."""
    rng = random.Random(seed)
    return [rng.randrange(128256) for _ in range(count)]


def think_tokens(response_tokens: int) -> int:
    """Reasoning a thinking model does before answering: half its answer, at least one token."""
    return max(1, response_tokens // 2)


def tool_call_id(rng: random.Random) -> str:
    """Ollama's ids for calls its own parsers find: ``call_`` + 8 of ``[a-z0-9]``."""
    return "call_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


def tool_arguments(seed: int, schema: Any) -> dict[str, Any]:
    """Arguments an emulated model fills in for a JSON-schema ``parameters`` object.

    The required properties (all of them when none is required), in schema order:
    an ``enum``'s first value, a word for strings, 1 for numbers, true for booleans,
    and empty arrays and objects; deterministic in ``seed``.
    """
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    wanted = [k for k in properties if not isinstance(required, list) or k in required]
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for key in wanted:
        prop = properties[key] if isinstance(properties[key], dict) else {}
        kind = prop.get("type")
        kind = kind[0] if isinstance(kind, list) and kind else kind
        if isinstance(prop.get("enum"), list) and prop["enum"]:
            out[key] = prop["enum"][0]
        elif kind in ("integer", "number"):
            out[key] = 1
        elif kind == "boolean":
            out[key] = True
        elif kind == "array":
            out[key] = []
        elif kind == "object":
            out[key] = {}
        else:
            out[key] = rng.choice(_WORDS)
    return out
