"""What was relayed: partial answers read from real streams, however they were split."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollama_balancer.core.resume import Dialect, Obstacle, Partial, partial_of
from tests.harness.resume_streams import CAPTURED, frames

STREAMS = {
    Dialect.CHAT: "chat",
    Dialect.GENERATE: "generate",
    Dialect.OPENAI: "openai",
    Dialect.ANTHROPIC: "anthropic",
}
#: Frames before the first token: Anthropic opens with message_start and a block start.
LEAD = {Dialect.CHAT: 0, Dialect.GENERATE: 0, Dialect.OPENAI: 0, Dialect.ANTHROPIC: 2}
#: The captured answers' pieces (the chat ones answer the same prompt in three dialects).
ANSWERED = ["More", " that", " as", " blue."]
GENERATED = ["So", " sunsets", " shorter", " and."]


def chat_line(**message: Any) -> bytes:
    doc: dict[str, Any] = {"model": "qwen3", "created_at": "2026-08-22T09:15:01.12Z"}
    doc |= {"message": {"role": "assistant", "content": "", **message}, "done": False}
    return orjson.dumps(doc) + b"\n"


def openai_frame(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    doc = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1787390101}
    doc |= {"model": "qwen3", "system_fingerprint": "fp_ollama"}
    doc["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def anthropic_event(doc: dict[str, Any]) -> bytes:
    return b"event: " + str(doc["type"]).encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("tokens", [0, 1, 3])
def test_text_and_tokens_of_a_cut_stream(dialect: Dialect, tokens: int) -> None:
    name = STREAMS[dialect]
    partial = partial_of(dialect, frames(name, LEAD[dialect] + tokens))
    pieces = GENERATED if dialect is Dialect.GENERATE else ANSWERED
    assert partial.text == "".join(pieces[:tokens])
    assert partial.tokens == tokens
    assert partial.resumable and partial.why_not is None and partial.dangling == 0
    relayed = tokens + LEAD[dialect]
    assert partial.model == ("llama3.2" if relayed else None)


def test_openai_identity_is_the_first_chunks() -> None:
    partial = partial_of(Dialect.OPENAI, frames("openai", 2))
    chunk = partial.chunk
    assert chunk is not None
    first = orjson.loads(frames("openai", 1)[0][6:])
    assert (chunk.id, chunk.created, chunk.model) == (first["id"], first["created"], "llama3.2")
    assert chunk.system_fingerprint == "fp_ollama" and chunk.role_sent
    assert chunk.head == frames("openai", 1)[0][6:].split(b'"choices"')[0]
    assert chunk.head.startswith(b'{"id":') and chunk.head.endswith(b",")


def test_openai_nothing_relayed_has_no_identity() -> None:
    partial = partial_of(Dialect.OPENAI, [])
    assert partial.chunk is None and partial.text == "" and partial.resumable


@pytest.mark.parametrize(
    ("count", "open_block", "blocks"),
    [
        pytest.param(1, None, 0, id="only message_start"),
        pytest.param(2, 0, 1, id="text block opened, no text yet"),
        pytest.param(4, 0, 1, id="two text deltas"),
    ],
)
def test_anthropic_identity_and_open_block(count: int, open_block: int | None, blocks: int) -> None:
    partial = partial_of(Dialect.ANTHROPIC, frames("anthropic", count))
    message = partial.message
    assert message is not None
    start = orjson.loads(frames("anthropic", 1)[0].split(b"data: ")[1])["message"]
    assert (message.id, message.model) == (start["id"], "llama3.2")
    assert message.input_tokens == start["usage"]["input_tokens"]
    assert (message.open_block, message.blocks) == (open_block, blocks)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_whole_stream_has_ended(dialect: Dialect) -> None:
    partial = partial_of(dialect, [CAPTURED[STREAMS[dialect]]])
    assert partial.ended and not partial.resumable and partial.why_not is Obstacle.ENDED
    assert partial.tokens == 4


@pytest.mark.parametrize(
    ("dialect", "name", "count"),
    [
        pytest.param(Dialect.CHAT, "chat", 5, id="native: the done line"),
        pytest.param(Dialect.OPENAI, "openai", 5, id="openai: the finish reason, before [DONE]"),
        pytest.param(Dialect.ANTHROPIC, "anthropic", 8, id="anthropic: message_delta"),
    ],
)
def test_the_end_of_generation_ends_before_the_framing_does(
    dialect: Dialect, name: str, count: int
) -> None:
    assert partial_of(dialect, frames(name, count)).ended
    assert not partial_of(dialect, frames(name, count - 1)).ended


@pytest.mark.parametrize("dialect", list(Dialect))
def test_every_split_of_the_chunks_reads_the_same(dialect: Dialect) -> None:
    data = b"".join(frames(STREAMS[dialect], LEAD[dialect] + 3))
    expected = partial_of(dialect, [data])
    for cut in range(len(data) + 1):
        assert partial_of(dialect, [data[:cut], data[cut:]]) == expected, cut
    assert partial_of(dialect, [data[i : i + 7] for i in range(0, len(data), 7)]) == expected


@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_truncated_last_frame_is_dropped(dialect: Dialect) -> None:
    complete = frames(STREAMS[dialect], LEAD[dialect] + 2)
    following = frames(STREAMS[dialect], LEAD[dialect] + 3)[-1]
    for size in (1, len(following) // 2, len(following) - 1):
        partial = partial_of(dialect, [*complete, following[:size]])
        assert partial.text == partial_of(dialect, complete).text
        assert partial.tokens == 2 and partial.dangling == size


@pytest.mark.parametrize(
    ("dialect", "chunks", "obstacle"),
    [
        pytest.param(
            Dialect.CHAT,
            [chat_line(thinking="The user asks"), chat_line(content="Blue")],
            Obstacle.THINKING,
            id="native chat thinking",
        ),
        pytest.param(
            Dialect.CHAT,
            [
                chat_line(content="Let me look."),
                chat_line(
                    tool_calls=[
                        {"function": {"index": 0, "name": "get_weather", "arguments": {"a": 1}}}
                    ]
                ),
            ],
            Obstacle.TOOL_CALL,
            id="native chat tool call",
        ),
        pytest.param(
            Dialect.GENERATE,
            [b'{"model":"qwen3","response":"","thinking":"Hmm","done":false}\n'],
            Obstacle.THINKING,
            id="generate thinking",
        ),
        pytest.param(
            Dialect.OPENAI,
            [openai_frame({"role": "assistant", "content": "", "reasoning": "Hmm"})],
            Obstacle.THINKING,
            id="openai reasoning",
        ),
        pytest.param(
            Dialect.OPENAI,
            [
                openai_frame({"role": "assistant", "content": "Sure"}),
                openai_frame(
                    {
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "index": 0,
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ]
                    }
                ),
            ],
            Obstacle.TOOL_CALL,
            id="openai tool call",
        ),
        pytest.param(
            Dialect.OPENAI,
            [openai_frame({"role": "assistant", "content": "a"}, index=1)],
            Obstacle.CHOICES,
            id="openai second choice",
        ),
        pytest.param(
            Dialect.ANTHROPIC,
            [
                frames("anthropic", 1)[0],
                anthropic_event(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "thinking", "thinking": ""},
                    }
                ),
                anthropic_event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "thinking_delta", "thinking": "Hmm"},
                    }
                ),
            ],
            Obstacle.THINKING,
            id="anthropic thinking block",
        ),
        pytest.param(
            Dialect.ANTHROPIC,
            frames("anthropic_tool", 3),
            Obstacle.TOOL_CALL,
            id="anthropic tool_use block (captured)",
        ),
    ],
)
def test_what_cannot_be_continued(
    dialect: Dialect, chunks: list[bytes], obstacle: Obstacle
) -> None:
    partial = partial_of(dialect, chunks)
    assert partial.obstacle is obstacle and partial.why_not is obstacle
    assert not partial.resumable and not partial.ended


@pytest.mark.parametrize(
    ("dialect", "last"),
    [
        pytest.param(Dialect.CHAT, b'{"error":"an error was encountered"}\n', id="ollama's error"),
        pytest.param(
            Dialect.CHAT,
            b'{"error":"gpu-a: stream broken","done":true,"done_reason":"error"}\n',
            id="the balancer's own end of a broken stream",
        ),
        pytest.param(Dialect.OPENAI, b"data: [DONE]\n\n", id="[DONE]"),
        pytest.param(
            Dialect.ANTHROPIC,
            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
            id="anthropic error event",
        ),
    ],
)
def test_an_error_or_end_marker_ends_the_stream(dialect: Dialect, last: bytes) -> None:
    partial = partial_of(dialect, [*frames(STREAMS[dialect], LEAD[dialect] + 2), last])
    assert partial.ended and partial.tokens == 2


def test_garbage_frames_are_skipped() -> None:
    chunks = [b"not json\n", b"[1,2]\n", *frames("chat", 2)]
    assert partial_of(Dialect.CHAT, chunks) == Partial(
        Dialect.CHAT, text="More that", tokens=2, model="llama3.2"
    )


def test_a_reported_prompt_count_is_kept() -> None:
    line = chat_line(content="x")[:-2] + b',"prompt_eval_count":31}\n'
    assert partial_of(Dialect.CHAT, [line]).prompt_tokens == 31
    assert partial_of(Dialect.CHAT, frames("chat", 3)).prompt_tokens is None
