"""Rendering, partial answers and where they resume, as tables (pure)."""

from __future__ import annotations

import pytest

from ollama_emulator import generation
from ollama_emulator.continuation import (
    Script,
    Turn,
    answer_text,
    plan_script,
    render_chat,
    resume,
    split_partial,
    split_raw,
)

QUESTION = (Turn("system", "be brief"), Turn("user", "why is the sky blue?"))
SEED = generation.seed_for(None, "model", "some prompt")


def natural(think: int = 0) -> Script:
    return plan_script(SEED, think=think, answer=24)


def said(parts: tuple[tuple[str, str], ...], kind: str = "content") -> str:
    return "".join(token for k, token in parts if k == kind)


def test_a_partial_answer_renders_as_the_prompt_plus_the_partial() -> None:
    before = render_chat(QUESTION)
    after = render_chat([*QUESTION, Turn("assistant", "The sky")])
    assert after == before + "The sky"
    assert before.endswith("<|assistant|>\n") and not after.endswith("<|end|>\n")


def test_what_a_slot_holds_after_an_answer_starts_every_continuation() -> None:
    script = natural(think=5)
    held = render_chat(QUESTION) + answer_text(script.parts)
    content = said(script.parts)
    thinking = said(script.parts, "thinking")
    for cut in (1, 7, len(content)):
        partial = Turn("assistant", content[:cut], thinking)
        assert held.startswith(render_chat([*QUESTION, partial]))
    assert held.startswith(render_chat([*QUESTION, Turn("assistant", "", thinking[:9])]))


@pytest.mark.parametrize(
    ("turns", "partial"),
    [
        pytest.param([Turn("user", "q")], None, id="ends with the user"),
        pytest.param([Turn("user", "q"), Turn("assistant", "a")], Turn("assistant", "a"), id="one"),
        pytest.param([Turn("user", "q"), Turn("assistant", "")], None, id="empty: no partial"),
    ],
)  # fmt: skip
def test_split_partial(turns: list[Turn], partial: Turn | None) -> None:
    history, got = split_partial(turns)
    assert got == partial and history == (Turn("user", "q"),)


@pytest.mark.parametrize(
    ("said_", "rest"),
    [
        pytest.param("", ["A", " b", " c."], id="nothing said"),
        pytest.param("A b", [" c."], id="at a token boundary"),
        pytest.param("A b c.", [], id="all of it"),
        pytest.param("A b ", ["c."], id="inside a token: the rest of it"),
        pytest.param("A x", None, id="not how it starts"),
    ],
)
def test_resume(said_: str, rest: list[str] | None) -> None:
    got = resume(["A", " b", " c."], said_)
    assert (None if got is None else list(got)) == rest


@pytest.mark.parametrize("cut", [1, 5, 23, 24])
def test_a_continued_answer_is_the_rest_of_the_uninterrupted_one(cut: int) -> None:
    whole = natural()
    partial = Turn("assistant", said(whole.parts[:cut]))
    script = plan_script(SEED, think=0, answer=24, partial=partial)
    assert script.continued and script.resumed and not script.thinking_open
    assert whole.parts[:cut] + script.parts == whole.parts


def test_an_answer_partial_skips_the_reasoning() -> None:
    whole = natural(think=6)
    content = [p for p in whole.parts if p[0] == "content"]
    partial = Turn("assistant", said(tuple(content[:3])), said(whole.parts, "thinking"))
    script = plan_script(SEED, think=6, answer=24, partial=partial)
    assert script.parts == tuple(content[3:])


def test_a_reasoning_partial_resumes_the_reasoning_then_answers() -> None:
    whole = natural(think=6)
    partial = Turn("assistant", "", said(whole.parts[:2], "thinking"))
    script = plan_script(SEED, think=6, answer=24, partial=partial)
    assert script.thinking_open and script.resumed
    assert whole.parts[:2] + script.parts == whole.parts


def test_a_partial_the_model_did_not_write_gets_a_fresh_continuation() -> None:
    partial = Turn("assistant", "Bananas are")
    script = plan_script(SEED, think=0, answer=24, partial=partial)
    assert script.continued and not script.resumed
    assert script.parts[0][1].startswith(" ") and len(script.parts) == 22
    assert script == plan_script(SEED, think=0, answer=24, partial=partial)  # deterministic


def test_num_predict_cuts_are_prefixes_of_the_natural_answer() -> None:
    tokens = generation.generate_tokens(SEED, 24)
    assert tokens[-1].endswith(".")
    five = plan_script(SEED, think=0, answer=24, limit=5)
    assert [t for _, t in five.parts] == tokens[:5] and five.cut
    assert not plan_script(SEED, think=0, answer=24, limit=24).cut


def test_tokens_past_the_limit_are_never_made() -> None:
    """Benchmarks give answers a huge natural length and end them with ``max_tokens``."""
    endless = plan_script(SEED, think=0, answer=10**12, limit=3)
    assert len(endless.parts) == 3 and endless.cut
    whole = plan_script(SEED, think=0, answer=10**12, limit=40)
    partial = Turn("assistant", said(whole.parts[:30]))
    rest = plan_script(SEED, think=0, answer=10**12, partial=partial, limit=10)
    assert rest.parts == whole.parts[30:]


def answer_for(text: str) -> list[str]:
    return generation.generate_tokens(generation.seed_for(None, "m", text), 24)


@pytest.mark.parametrize("cut", [1, 2, 10, 24])
def test_split_raw_finds_the_partial_answer_at_the_end(cut: int) -> None:
    prompt = "[INST] Why is the Sky blue? Tell Me. [/INST] "
    partial = "".join(answer_for(prompt)[:cut])
    assert split_raw(prompt + partial, answer_for) == (prompt, partial)


def test_split_raw_leaves_a_prompt_without_a_partial_alone() -> None:
    prompt = "The Sky Is Blue Because Of Why?"
    assert split_raw(prompt, answer_for) == (prompt, "")
