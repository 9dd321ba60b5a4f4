"""The emulator's tests' small, round models (VRAM arithmetic stays obvious) and the type of
their node factory fixture, ``make_node`` (``tests/emulator/conftest.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ollama_emulator import EmulatedNode, ModelSpec, default_catalogue

__all__ = ["CATALOGUE", "GIB", "INSTALLED", "TEST_MODELS", "TIME_SCALE", "MakeNode"]

GIB = 2**30
TIME_SCALE = 0.01

#: Small, round models so VRAM arithmetic in tests is obvious.
TEST_MODELS = [
    ModelSpec(name="tiny:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    ModelSpec(name="small:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    ModelSpec(name="other:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=8192, embedding_length=64),
    # 200 tokens at 10/s: 20 emulated seconds, 0.2 s real — time to disconnect mid-stream.
    ModelSpec(name="slow:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=10,
              response_tokens=200, context_length=8192, embedding_length=64),
    ModelSpec(name="kv:1b", size_bytes=4 * GIB, load_seconds=10, tokens_per_second=200,
              response_tokens=8, context_length=65536, kv_bytes_per_token=2**15),
]  # fmt: skip
CATALOGUE = default_catalogue().with_specs(TEST_MODELS)

#: On disk on every node ``make_node`` starts, unless the test says otherwise.
INSTALLED = ["llama3.2", "nomic-embed-text", "tiny:1b", "small:1b", "other:1b", "slow:1b"]

MakeNode = Callable[..., Awaitable[EmulatedNode]]
"""``await make_node(vram_bytes=..., installed=[...])``: one started node (port 0)."""
