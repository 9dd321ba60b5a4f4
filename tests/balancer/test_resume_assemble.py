"""Assembled answers: a complete stream made into the body Ollama answers without one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollama_balancer.core.resume import Dialect, IncompleteStream, assemble
from tests.harness.resume_streams import CAPTURED, frames, steady


@pytest.mark.parametrize(
    ("dialect", "name", "content_type"),
    [
        pytest.param(Dialect.CHAT, "chat", "application/json; charset=utf-8", id="chat"),
        pytest.param(
            Dialect.GENERATE, "generate", "application/json; charset=utf-8", id="generate"
        ),
        pytest.param(Dialect.OPENAI, "openai", "application/json; charset=utf-8", id="openai"),
        pytest.param(Dialect.ANTHROPIC, "anthropic", "application/json", id="anthropic"),
        pytest.param(
            Dialect.ANTHROPIC, "anthropic_tool", "application/json", id="anthropic tool call"
        ),
    ],
)
def test_the_same_body_the_emulator_answers_without_a_stream(
    dialect: Dialect, name: str, content_type: str
) -> None:
    assembled = assemble(dialect, [CAPTURED[name]])
    answered = CAPTURED[name + "_json"]
    assert steady(assembled.doc) == steady(orjson.loads(answered))  # field by field, in order
    assert orjson.loads(assembled.body) == assembled.doc
    assert assembled.body.endswith(b"}\n") is answered.endswith(b"}\n")
    assert assembled.content_type == content_type


def test_the_split_does_not_matter() -> None:
    raw = CAPTURED["anthropic"]
    whole = assemble(Dialect.ANTHROPIC, [raw]).doc
    for cut in range(0, len(raw), 5):
        assert assemble(Dialect.ANTHROPIC, [raw[:cut], raw[cut:]]).doc == whole


def test_native_chat_gathers_thinking_and_tool_calls() -> None:
    call = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    stream = [
        {"model": "q", "message": {"role": "assistant", "content": "", "thinking": "I should"}},
        {"model": "q", "message": {"role": "assistant", "content": "", "thinking": " look."}},
        {"model": "q", "message": {"role": "assistant", "content": "Checking."}},
        {"model": "q", "message": {"role": "assistant", "content": "", "tool_calls": [call]}},
    ]
    final = {"model": "q", "message": {"role": "assistant", "content": ""}, "done": True}
    final |= {"done_reason": "stop", "eval_count": 9}
    raw = b"".join(orjson.dumps({**d, "done": False}) + b"\n" for d in stream)
    doc = assemble(Dialect.CHAT, [raw + orjson.dumps(final) + b"\n"]).doc
    assert doc == {
        "model": "q",
        "message": {
            "role": "assistant",
            "content": "Checking.",
            "thinking": "I should look.",
            "tool_calls": [call],
        },
        "done": True,
        "done_reason": "stop",
        "eval_count": 9,
    }
    assert list(doc["message"]) == ["role", "content", "thinking", "tool_calls"]


def test_generate_keeps_what_the_final_line_says() -> None:
    doc = assemble(Dialect.GENERATE, [CAPTURED["generate"]]).doc
    final = orjson.loads(frames("generate")[-1])
    # a raw prompt's answer carries no ``context`` (Ollama returns none for raw mode)
    assert "context" not in final and "context" not in doc
    assert doc["response"] == "So sunsets shorter and" and doc["done_reason"] == "length"
    assert doc["eval_count"] == final["eval_count"]


def test_openai_gathers_reasoning_and_tool_calls() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        doc = {"id": "chatcmpl-5", "object": "chat.completion.chunk", "created": 17, "model": "q"}
        doc |= {"system_fingerprint": "fp_ollama"}
        doc["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    call = {"id": "call_1", "index": 0, "type": "function"}
    call |= {"function": {"name": "get_weather", "arguments": '{"city":'}}
    rest = {"index": 0, "function": {"arguments": '"Paris"}'}}
    raw = b"".join(
        [
            chunk({"role": "assistant", "content": "", "reasoning": "Hmm"}),
            chunk({"content": "Let me check."}),
            chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [rest]}),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    doc = assemble(Dialect.OPENAI, [raw]).doc
    message = doc["choices"][0]["message"]
    assert message["content"] == "Let me check." and message["reasoning"] == "Hmm"
    assert message["tool_calls"] == [
        {**call, "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert doc["choices"][0]["finish_reason"] == "tool_calls"
    assert doc["usage"] == {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}
    assert (doc["id"], doc["object"], doc["created"]) == ("chatcmpl-5", "chat.completion", 17)


@pytest.mark.parametrize(
    ("dialect", "chunks", "message"),
    [
        pytest.param(
            Dialect.CHAT, frames("chat", 3), "the stream ended before its final line", id="chat cut"
        ),
        pytest.param(
            Dialect.CHAT,
            [*frames("chat", 2), b'{"error":"model runner has unexpectedly stopped"}\n'],
            "model runner has unexpectedly stopped",
            id="chat error line",
        ),
        pytest.param(
            Dialect.OPENAI,
            frames("openai", 4),
            "the stream ended before its finish reason",
            id="openai cut",
        ),
        pytest.param(
            Dialect.OPENAI,
            [b'data: {"error":{"message":"boom","type":"api_error"}}\n\n'],
            "boom",
            id="openai error",
        ),
        pytest.param(
            Dialect.ANTHROPIC,
            frames("anthropic", 6),
            "the stream ended before its message_delta",
            id="anthropic cut",
        ),
        pytest.param(
            Dialect.ANTHROPIC,
            [
                *frames("anthropic", 3),
                b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
                b'"message":"overloaded"}}\n\n',
            ],
            "overloaded",
            id="anthropic error event",
        ),
    ],
)
def test_no_answer_from_an_incomplete_stream(
    dialect: Dialect, chunks: list[bytes], message: str
) -> None:
    with pytest.raises(IncompleteStream) as caught:
        assemble(dialect, chunks)
    assert caught.value.message == message
