"""Continuation requests: who can have one, and what it looks like in each API's shape."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_balancer.core.resume import (
    Dialect,
    NotResumable,
    Obstacle,
    Partial,
    continuation,
    dialect_of,
    partial_of,
    resumable,
    streamed,
)
from tests.harness.resume_streams import frames

USER = [{"role": "user", "content": "Why is the sky blue?"}]
SO_FAR = Partial(Dialect.CHAT, text="The sky", tokens=2)


def so_far(dialect: Dialect) -> Partial:
    return Partial(dialect, text="The sky", tokens=2)


@pytest.mark.parametrize(
    ("path", "doc", "thinks", "obstacle"),
    [
        pytest.param("/api/chat", {"messages": USER}, False, None, id="chat"),
        pytest.param(
            "/api/chat", {"messages": USER, "tools": [{}]}, False, None, id="chat offering tools"
        ),
        pytest.param("/api/chat", {"messages": USER}, True, Obstacle.THINKING, id="thinking model"),
        pytest.param(
            "/api/chat",
            {"messages": USER, "think": False},
            True,
            None,
            id="thinking model told not to think",
        ),
        pytest.param(
            "/api/chat", {"messages": USER, "think": "high"}, False, Obstacle.THINKING, id="think"
        ),
        pytest.param(
            "/api/chat", {"messages": USER, "format": "json"}, False, Obstacle.FORMAT, id="format"
        ),
        pytest.param(
            "/api/chat",
            {"messages": USER, "format": {"type": "object"}},
            False,
            Obstacle.FORMAT,
            id="schema",
        ),
        pytest.param("/api/chat", {"messages": []}, False, Obstacle.BODY, id="no messages"),
        pytest.param("/api/generate", {"prompt": "x", "raw": True}, False, None, id="raw generate"),
        pytest.param(
            "/api/generate", {"prompt": "x"}, False, Obstacle.TEMPLATE, id="templated generate"
        ),
        pytest.param(
            "/api/generate",
            {"prompt": "x", "raw": True, "suffix": "y"},
            False,
            Obstacle.TEMPLATE,
            id="suffix",
        ),
        pytest.param(
            "/api/generate",
            {"prompt": "x", "raw": True, "think": True},
            False,
            Obstacle.THINKING,
            id="raw generate thinking",
        ),
        pytest.param("/v1/chat/completions", {"messages": USER}, False, None, id="openai"),
        pytest.param(
            "/v1/chat/completions", {"messages": USER, "n": 2}, False, Obstacle.CHOICES, id="n=2"
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": USER, "response_format": {"type": "json_schema"}},
            False,
            Obstacle.FORMAT,
            id="openai json schema",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": USER, "response_format": {"type": "text"}},
            False,
            None,
            id="openai plain text format",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": USER, "reasoning_effort": "low"},
            False,
            Obstacle.THINKING,
            id="reasoning effort",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": USER, "reasoning": {"effort": "none"}},
            True,
            None,
            id="reasoning turned off on a thinking model",
        ),
        pytest.param("/v1/messages", {"messages": USER}, False, None, id="anthropic"),
        pytest.param(
            "/v1/messages",
            {"messages": USER, "thinking": {"type": "enabled", "budget_tokens": 9}},
            False,
            Obstacle.THINKING,
            id="anthropic thinking",
        ),
        pytest.param(
            "/v1/messages",
            {"messages": USER, "thinking": {"type": "disabled"}},
            True,
            None,
            id="anthropic thinking disabled on a thinking model",
        ),
        pytest.param(
            "/v1/messages",
            {"messages": USER, "output_config": {"effort": "high"}},
            False,
            Obstacle.THINKING,
            id="anthropic effort",
        ),
        pytest.param("/v1/messages", {"messages": USER}, True, Obstacle.THINKING, id="thinks"),
        pytest.param("/v1/completions", {"prompt": "x"}, False, Obstacle.API, id="completions"),
        pytest.param("/v1/responses", {"input": "x"}, False, Obstacle.API, id="responses"),
        pytest.param("/api/embed", {"input": "x"}, False, Obstacle.API, id="embed"),
    ],
)
def test_resumable(path: str, doc: dict[str, Any], thinks: bool, obstacle: Obstacle | None) -> None:
    verdict = resumable(path, doc, thinks=thinks)
    assert verdict.obstacle is obstacle
    assert bool(verdict) is (obstacle is None)


@pytest.mark.parametrize(
    ("path", "doc", "obstacle"),
    [
        pytest.param("/api/chat", {"messages": USER}, Obstacle.TEMPLATE, id="chat"),
        pytest.param("/v1/chat/completions", {"messages": USER}, Obstacle.TEMPLATE, id="openai"),
        pytest.param("/v1/messages", {"messages": USER}, Obstacle.TEMPLATE, id="anthropic"),
        pytest.param("/api/generate", {"prompt": "x", "raw": True}, None, id="raw: no template"),
    ],
)
def test_a_template_that_closes_the_turn(
    path: str, doc: dict[str, Any], obstacle: Obstacle | None
) -> None:
    assert resumable(path, doc, continues=False).obstacle is obstacle


@pytest.mark.parametrize(
    ("path", "doc", "expected"),
    [
        pytest.param(
            "/api/chat",
            {"model": "m", "messages": USER, "stream": False, "options": {"num_predict": 10}},
            {
                "model": "m",
                "messages": [*USER, {"role": "assistant", "content": "The sky"}],
                "stream": True,
                "options": {"num_predict": 8},
            },
            id="chat: the answer so far as an assistant message",
        ),
        pytest.param(
            "/api/chat",
            {"model": "m", "messages": [*USER, {"role": "Assistant", "content": "Well, "}]},
            {
                "model": "m",
                "messages": [*USER, {"role": "Assistant", "content": "Well, The sky"}],
                "stream": True,
            },
            id="chat: a prefill is extended",
        ),
        pytest.param(
            "/api/generate",
            {"model": "m", "prompt": "<s>Q: ", "raw": True, "options": {"num_predict": 2}},
            {
                "model": "m",
                "prompt": "<s>Q: The sky",
                "raw": True,
                "stream": True,
                "options": {"num_predict": 1},
            },
            id="raw generate: prompt + answer; a spent limit keeps one token",
        ),
        pytest.param(
            "/api/generate",
            {"model": "m", "prompt": "p", "raw": True, "options": {"num_predict": -1}},
            {
                "model": "m",
                "prompt": "pThe sky",
                "raw": True,
                "stream": True,
                "options": {"num_predict": -1},
            },
            id="an unbounded limit stays unbounded",
        ),
        pytest.param(
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": USER,
                "max_tokens": 100,
                "max_completion_tokens": 50,
                "stream_options": {"include_usage": False, "other": 1},
            },
            {
                "model": "m",
                "messages": [*USER, {"role": "assistant", "content": "The sky"}],
                "max_tokens": 98,
                "max_completion_tokens": 48,
                "stream_options": {"include_usage": True, "other": 1},
                "stream": True,
            },
            id="openai: streamed with usage, both limits reduced",
        ),
        pytest.param(
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "text", "text": "Well, "}]},
                ],
            },
            {
                "model": "m",
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "text", "text": "Well, The sky"}]},
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            id="openai: a prefill in parts: its last text part is extended",
        ),
        pytest.param(
            "/v1/messages",
            {"model": "m", "messages": USER, "max_tokens": 1024},
            {
                "model": "m",
                "messages": [*USER, {"role": "assistant", "content": "The sky"}],
                "max_tokens": 1022,
                "stream": True,
            },
            id="anthropic",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 9,
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "content": [{"type": "image", "source": {}}],
                    },
                ],
            },
            {
                "model": "m",
                "max_tokens": 7,
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "image", "source": {}},
                            {"type": "text", "text": "The sky"},
                        ],
                    },
                ],
                "stream": True,
            },
            id="anthropic: a prefill ending in another block gets a text block",
        ),
    ],
)
def test_continuation(path: str, doc: dict[str, Any], expected: dict[str, Any]) -> None:
    before = repr(doc)
    dialect = dialect_of(path)
    assert dialect is not None
    partial = so_far(dialect)
    assert continuation(path, doc, partial) == expected
    assert repr(doc) == before  # the original request is left as it was


def test_nothing_relayed_yet_sends_the_request_again_as_a_stream() -> None:
    doc = {"model": "m", "messages": USER, "options": {"num_predict": 5}}
    body = continuation("/api/chat", doc, Partial(Dialect.CHAT))
    assert body == {**doc, "stream": True}


def test_a_tool_call_answer_is_followed_by_a_new_assistant_message() -> None:
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}
    doc = {"model": "m", "messages": [*USER, call]}
    body = continuation("/api/chat", doc, SO_FAR)
    assert body["messages"] == [*USER, call, {"role": "assistant", "content": "The sky"}]


def test_a_captured_partial_answer_continues() -> None:
    partial = partial_of(Dialect.OPENAI, frames("openai", 3))
    body = continuation("/v1/chat/completions", {"model": "llama3.2", "messages": USER}, partial)
    assert body["messages"][-1] == {"role": "assistant", "content": "More that as"}


@pytest.mark.parametrize(
    ("path", "doc", "partial", "obstacle"),
    [
        pytest.param(
            "/api/generate", {"prompt": "x"}, so_far(Dialect.GENERATE), Obstacle.TEMPLATE, id="path"
        ),
        pytest.param(
            "/api/chat",
            {"messages": USER},
            Partial(Dialect.CHAT, obstacle=Obstacle.THINKING),
            Obstacle.THINKING,
            id="thinking relayed",
        ),
        pytest.param(
            "/api/chat",
            {"messages": USER},
            Partial(Dialect.CHAT, text="x", tokens=1, ended=True),
            Obstacle.ENDED,
            id="already ended",
        ),
    ],
)
def test_no_continuation_where_none_can_be(
    path: str, doc: dict[str, Any], partial: Partial, obstacle: Obstacle
) -> None:
    with pytest.raises(NotResumable) as caught:
        continuation(path, doc, partial)
    assert caught.value.obstacle is obstacle


@pytest.mark.parametrize(
    ("path", "doc", "expected"),
    [
        pytest.param(
            "/api/chat",
            {"messages": USER, "stream": False},
            {"messages": USER, "stream": True},
            id="native",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": USER},
            {"messages": USER, "stream": True, "stream_options": {"include_usage": True}},
            id="openai asks for its usage chunk",
        ),
        pytest.param(
            "/v1/messages",
            {"messages": USER, "stream": False},
            {"messages": USER, "stream": True},
            id="anthropic",
        ),
    ],
)
def test_streamed(path: str, doc: dict[str, Any], expected: dict[str, Any]) -> None:
    assert streamed(path, doc) == expected
