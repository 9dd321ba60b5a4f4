"""The runner's prompt cache and the release of a cancelled prompt, as tables (pure)."""

from __future__ import annotations

import math

import pytest
import yaml

from ollama_emulator import load_config
from ollama_emulator.cancellation import PrefillCut, prefill_cut
from ollama_emulator.prompt_cache import (
    HostMemory,
    Placement,
    PromptCache,
    cached_tokens,
    common_prefix,
)


@pytest.mark.parametrize(
    ("a", "b", "common"),
    [
        pytest.param("", "abc", 0, id="empty"),
        pytest.param("abc", "abc", 3, id="equal"),
        pytest.param("abcdef", "abc", 3, id="one contains the other"),
        pytest.param("abcxyz", "abcdef", 3, id="diverge"),
        pytest.param("x" * 999 + "a", "x" * 999 + "b", 999, id="long"),
        pytest.param("abc", "xbc", 0, id="first differs"),
    ],
)
def test_common_prefix(a: str, b: str, common: int) -> None:
    assert common_prefix(a, b) == common == common_prefix(b, a)


@pytest.mark.parametrize(
    ("prompt_tokens", "chars", "common", "cached"),
    [
        pytest.param(100, 400, 0, 0, id="nothing shared"),
        pytest.param(100, 400, 200, 50, id="half the text, half the tokens"),
        pytest.param(100, 400, 400, 99, id="all of it: the last token is evaluated again"),
        pytest.param(100, 400, 900, 99, id="the cache holds more than the prompt"),
        pytest.param(1, 4, 4, 0, id="a one-token prompt is always evaluated"),
    ],
)
def test_cached_tokens(prompt_tokens: int, chars: int, common: int, cached: int) -> None:
    assert cached_tokens(prompt_tokens, chars, common) == cached


def cache(texts: list[str], *, busy: tuple[int, ...] = (), ram: int = 0) -> PromptCache:
    """Slots holding ``texts``, released in that order (the last is the most recent)."""
    c = PromptCache(len(texts), memory=HostMemory(ram, 0, 10_000))
    for i, text in enumerate(texts):
        c.slots[i].text, c.slots[i].last_used = text, i
    for i in busy:
        c.slots[i].busy = True
    return c


@pytest.mark.parametrize(
    ("texts", "busy", "prompt", "slot", "common"),
    [
        pytest.param(["hello world", "goodbye"], (), "hello world, again", 0, 11, id="longest"),
        pytest.param(["hello world", "hello"], (), "hello world!", 0, 11, id="longer of two"),
        pytest.param(["hello world", "other"], (0,), "hello world!", 1, 0, id="busy slots skipped"),
        pytest.param(["ab", "cd", "ef"], (), "zzzz", 0, 0, id="no match: least recently used"),
        pytest.param(["a" + "x" * 20, "q"], (), "a" + "y" * 20, 0, 1, id="under 10%: LRU"),
    ],
)  # fmt: skip
def test_a_request_takes_the_free_slot_with_the_longest_common_prefix(
    texts: list[str], busy: tuple[int, ...], prompt: str, slot: int, common: int
) -> None:
    c = cache(texts, busy=busy)
    assert c.place(prompt) == Placement(slot, common)
    assert c.slots[slot].busy


def test_among_never_used_slots_the_last_is_taken() -> None:
    c = PromptCache(3)
    assert c.place("anything") == Placement(2, 0)
    assert c.free == 2


def test_the_slot_cache_is_what_the_last_request_left() -> None:
    c = PromptCache(1)
    placement = c.place("prompt")
    c.release(placement.slot, "prompt and its answer")
    assert c.place("prompt and its answer, continued") == Placement(0, 21)


def test_host_memory_serves_a_prompt_whose_slot_was_reused() -> None:
    c = PromptCache(1, memory=HostMemory(2**30, 0, 10_000))
    c.release(c.place("victim prompt").slot, "victim prompt + partial answer")
    c.release(c.place("someone else").slot, "someone else + answer")  # LRU: the victim's slot
    placement = c.place("victim prompt + partial answer + more")
    assert placement == Placement(0, len("victim prompt + partial answer"), restored=True)
    # Taken out of host memory; the slot's previous cache went there instead.
    assert c.memory.entries == ["someone else + answer"]


def test_without_host_memory_a_reused_slot_has_lost_the_prompt() -> None:
    c = PromptCache(1)
    c.release(c.place("victim prompt").slot, "victim prompt + partial answer")
    c.release(c.place("someone else").slot, "someone else + answer")
    assert c.place("victim prompt + partial answer + more") == Placement(0, 0)


@pytest.mark.parametrize(
    ("entries", "text", "after"),
    [
        pytest.param(["abc"], "abc", ["abc"], id="held already"),
        pytest.param(["abcdef"], "abc", ["abcdef"], id="contained in an entry"),
        pytest.param(["abc", "xyz"], "abcdef", ["xyz", "abcdef"], id="replaces what it contains"),
        pytest.param([], "", [], id="empty caches are not saved"),
    ],
)
def test_host_memory_saves(entries: list[str], text: str, after: list[str]) -> None:
    memory = HostMemory(2**30, 0, 10_000)
    memory.entries = list(entries)
    memory.save(text)
    assert memory.entries == after


@pytest.mark.parametrize(
    ("entries", "current", "prompt", "loaded"),
    [
        pytest.param(["abcdefgh"], "", "abcdefgh-more", "abcdefgh", id="empty slot: any entry"),
        pytest.param(["abcdefgh"], "abcdefgh", "abcdefgh-more", None, id="the slot is as good"),
        pytest.param(["ab" + "z" * 30], "", "abq", None, id="would keep under a quarter of it"),
        pytest.param(["abcdXXXX", "abcdefgh"], "", "abcdefgh!", "abcdefgh", id="the better of two"),
    ],
)
def test_host_memory_loads(
    entries: list[str], current: str, prompt: str, loaded: str | None
) -> None:
    memory = HostMemory(2**30, 0, 10_000)
    memory.entries = list(entries)
    assert memory.load(current, prompt) == loaded
    if loaded is None:
        assert memory.entries == entries
    else:
        assert loaded not in memory.entries and len(memory.entries) == len(entries) - 1


@pytest.mark.parametrize(
    ("budget", "per_token", "min_tokens", "kept"),
    [
        pytest.param(100 * 1000, 1000, 0, ["b" * 200, "c" * 200], id="bytes: oldest go first"),
        pytest.param(10**9, 0, 120, ["b" * 200, "c" * 200], id="no KV size: the token limit"),
        pytest.param(1, 1000, 0, ["c" * 200], id="at least one stays"),
    ],
)
def test_host_memory_budget(budget: int, per_token: int, min_tokens: int, kept: list[str]) -> None:
    memory = HostMemory(budget, per_token, min_tokens)
    for text in ("a" * 200, "b" * 200, "c" * 200):  # 50 tokens each
        memory.save(text)
    assert memory.entries == kept


def test_a_starting_request_saves_the_idle_slots() -> None:
    c = cache(["first prompt", "second prompt"], ram=2**30)
    c.place("first prompt, again")
    assert c.memory.entries == ["second prompt"]


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize(
    ("left", "tokens", "poll", "cut"),
    [
        # 100 tokens/s, steps of 512 tokens (5.12 s), polls every second.
        pytest.param(0.2, 200, 1.0, PrefillCut(2.0, 200), id="one step: free when it ends"),
        pytest.param(0.5, 80, 1.0, None, id="ends before the first poll"),
        pytest.param(0.2, 3000, 1.0, PrefillCut(5.12, 512), id="end of the step in progress"),
        pytest.param(5.5, 3000, 1.0, PrefillCut(10.24, 1024), id="noticed in the second step"),
        pytest.param(27.3, 3000, 1.0, PrefillCut(30.0, 3000), id="in the last step: to its end"),
        pytest.param(0.2, 3000, math.inf, None, id="Go runners: only at the first token"),
    ],
)
def test_a_cancelled_prompt_stops_at_a_step_after_the_next_poll(
    left: float, tokens: int, poll: float, cut: PrefillCut | None
) -> None:
    got = prefill_cut(left, tokens=tokens, rate=100.0, batch=512, poll=poll)
    if cut is None:
        assert got is None
    else:
        assert got is not None
        assert (round(got.at, 6), got.processed) == (cut.at, cut.processed)


def test_the_runner_settings_from_yaml() -> None:
    doc = yaml.safe_load(
        "defaults: {prompt_cache_ram: 0, cancel_poll_seconds: .inf}\n"
        "nodes: [{name: a, num_batch: 2048, slot_prompt_similarity: 0.5}]\n"
    )
    (node,) = load_config(doc).nodes
    assert (node.prompt_cache_ram, node.cancel_poll_seconds) == (0, math.inf)
    assert (node.num_batch, node.slot_prompt_similarity) == (2048, 0.5)
