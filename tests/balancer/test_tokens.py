"""Token estimates from request bodies, and their correction by Ollama's reported counts."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_balancer.core.tokens import (
    DEFAULT_DECODE_SECONDS,
    DEFAULT_OUTPUT,
    IMAGE_TOKENS,
    RateBook,
    TokenCorrection,
    TokenEstimate,
    estimate_tokens,
)

TEXT_400 = "x" * 400  # 100 tokens at 4 characters a token


@pytest.mark.parametrize(
    ("path", "doc", "prompt", "output"),
    [
        pytest.param(
            "/api/generate",
            {"prompt": TEXT_400, "options": {"num_predict": 50}},
            100,
            50,
            id="generate: prompt chars/4, num_predict",
        ),
        pytest.param(
            "/api/generate",
            {"prompt": "abc", "system": "x" * 37},
            10,
            DEFAULT_OUTPUT,
            id="system counts; no limit: the default output",
        ),
        pytest.param(
            "/api/generate",
            {"prompt": "", "options": {"num_predict": -1}},
            0,
            DEFAULT_OUTPUT,
            id="num_predict -1 means unbounded: the default",
        ),
        pytest.param(
            "/api/chat",
            {
                "messages": [
                    {"role": "system", "content": "x" * 40},
                    {"role": "user", "content": "y" * 40, "images": ["AAAA", "BBBB"]},
                ]
            },
            20 + 2 * IMAGE_TOKENS,
            DEFAULT_OUTPUT,
            id="chat messages and images",
        ),
        pytest.param(
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": TEXT_400},
                            {"type": "image_url", "image_url": {"url": "data:..."}},
                        ],
                    }
                ],
                "max_tokens": 64,
            },
            100 + IMAGE_TOKENS,
            64,
            id="openai content parts and max_tokens",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7},
            1,
            7,
            id="openai max_completion_tokens",
        ),
        pytest.param(
            "/v1/messages",
            {
                "system": [{"type": "text", "text": "x" * 80}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "y" * 40}]},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "content": "z" * 40}],
                    },
                ],
                "max_tokens": 1024,
            },
            40,
            1024,
            id="anthropic blocks, tool results and max_tokens",
        ),
        pytest.param(
            "/api/embed",
            {"input": ["x" * 40, "y" * 40], "options": {"num_predict": 10}},
            20,
            0,
            id="embeddings produce no output",
        ),
        pytest.param(
            "/api/chat",
            {"messages": "not a list", "options": "nope", "max_tokens": True},
            0,
            DEFAULT_OUTPUT,
            id="malformed fields are ignored, not trusted",
        ),
        pytest.param(
            "/api/chat",
            {"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]},
            12,  # 45 characters of compact JSON
            DEFAULT_OUTPUT,
            id="tool definitions count by their JSON length",
        ),
    ],
)
def test_estimate(path: str, doc: dict[str, Any], prompt: int, output: int) -> None:
    est = estimate_tokens(doc, path)
    assert (est.prompt, est.output) == (prompt, output)
    assert est.total == max(1, prompt + output)


def test_total_is_never_zero() -> None:
    assert TokenEstimate(0, 0).total == 1


@pytest.mark.parametrize(
    ("reports", "factors"),
    [
        pytest.param([], (1.0, 1.0), id="nothing learned: estimates stand"),
        pytest.param([(150, 25)], (1.5, 0.25), id="the first report is taken as is"),
        pytest.param(
            [(150, 25), (100, 100)],
            (1.5 + 0.2 * (1.0 - 1.5), 0.25 + 0.2 * (1.0 - 0.25)),
            id="then an EWMA with weight 0.2",
        ),
        pytest.param([(None, 50)], (1.0, 0.5), id="a missing count teaches nothing about it"),
        pytest.param([(100_000, 0)], (10.0, 0.1), id="a factor is bounded to [0.1, 10]"),
    ],
)
def test_correction(
    reports: list[tuple[int | None, int | None]], factors: tuple[float, float]
) -> None:
    raw = TokenEstimate(prompt=100, output=100)
    c = TokenCorrection()
    for prompt_count, eval_count in reports:
        c.learn("team-a", "llama3", raw, prompt_count, eval_count)
    assert c.factors("team-a", "llama3") == pytest.approx(factors)
    corrected = c.correct("team-a", "llama3", TokenEstimate(200, 40))
    assert corrected == TokenEstimate(round(200 * factors[0]), round(40 * factors[1]))


def test_correction_is_per_tenant_and_model() -> None:
    c = TokenCorrection()
    c.learn("a", "llama3", TokenEstimate(100, 100), 200, 50)
    assert c.factors("b", "llama3") == (1.0, 1.0)
    assert c.factors("a", "mistral") == (1.0, 1.0)
    assert c.factors("a", "llama3") == (2.0, 0.5)


def test_correction_memory_is_bounded() -> None:
    c = TokenCorrection(max_entries=4)
    for i in range(10):
        c.learn(f"user-{i}", "m", TokenEstimate(100, 100), 200, 200)
    assert c.factors("user-0", "m") == (1.0, 1.0)  # forgotten
    assert c.factors("user-9", "m") == (2.0, 2.0)


def test_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        TokenCorrection(alpha=0)


@pytest.mark.parametrize(
    ("eval_count", "knows"),
    [
        (None, False),  # an answer without Ollama's final metrics teaches nothing
        (4, False),  # too few tokens to time
        (8, True),
    ],
)
def test_a_rate_is_known_once_an_answer_timed_it(eval_count: int | None, knows: bool) -> None:
    rates = RateBook()
    assert not rates.knows("m")
    rates.learn("m", None, None, eval_count, 1_000_000_000)
    assert rates.knows("m") is knows
    assert not rates.knows("other")
    est = TokenEstimate(prompt=0, output=100)
    expected = 100 * (1 / 8 if knows else DEFAULT_DECODE_SECONDS)
    assert rates.seconds("m", est) == pytest.approx(expected)
