"""Stitched streams: a continuation's bytes rewritten so that the client's stream goes on."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollama_balancer.core.resume import (
    Dialect,
    Partial,
    Spent,
    Stitcher,
    assemble,
    partial_of,
    stitcher,
)
from tests.harness.resume_streams import CAPTURED, FRAMES, frames

STREAMS = {
    Dialect.CHAT: "chat",
    Dialect.GENERATE: "generate",
    Dialect.OPENAI: "openai",
    Dialect.ANTHROPIC: "anthropic",
}
LEAD = {Dialect.CHAT: 0, Dialect.GENERATE: 0, Dialect.OPENAI: 0, Dialect.ANTHROPIC: 2}
STREAMED = {"stream": True}
STARTED, NOW = 100.0, 102.5  # the request arrived 2.5 s before the continuation ended


def clock() -> float:
    return NOW


def make(partial: Partial, doc: dict[str, Any] | None = None, **kw: Any) -> Stitcher:
    return stitcher(partial, STREAMED if doc is None else doc, clock=clock, started=STARTED, **kw)


def retagged(name: str) -> bytes:
    """A captured answer as a continuation sees it: its own id and ``created``."""
    raw = CAPTURED[name]
    if name.startswith("openai"):
        first = orjson.loads(frames(name, 1)[0][6:])
        raw = raw.replace(f'"id":"{first["id"]}"'.encode(), b'"id":"chatcmpl-999"')
        raw = raw.replace(f'"created":{first["created"]}'.encode(), b'"created":1700000000')
    if name.startswith("anthropic"):
        start = orjson.loads(frames(name, 1)[0].split(b"data: ")[1])
        raw = raw.replace(start["message"]["id"].encode(), b"msg_" + b"c" * 24)
    return raw


def events(raw: bytes) -> list[tuple[str, Any]]:
    """``(event name, data)`` per SSE event; the data parsed unless it is ``[DONE]``."""
    out: list[tuple[str, Any]] = []
    for event in raw.split(b"\n\n"):
        if not event:
            continue
        name, data = b"", b""
        for line in event.split(b"\n"):
            key, _, value = line.partition(b": ")
            if key == b"event":
                name = value
            elif key == b"data":
                data = value
        out.append((name.decode(), data.decode() if data == b"[DONE]" else orjson.loads(data)))
    return out


def lines(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.split(b"\n") if line]


@pytest.mark.parametrize("dialect", [Dialect.CHAT, Dialect.GENERATE])
def test_native_lines_pass_and_the_final_line_adds_up(dialect: Dialect) -> None:
    name = STREAMS[dialect]
    partial = partial_of(dialect, frames(name, 2))
    out = make(partial).feed(CAPTURED[name])
    assert out.split(b"\n")[:4] == CAPTURED[name].split(b"\n")[:4]  # content lines as they are
    theirs, ours = lines(CAPTURED[name])[-1], lines(out)[-1]
    assert list(ours) == list(theirs)  # same fields, same order
    assert ours["eval_count"] == 2 + theirs["eval_count"]
    assert ours["prompt_eval_count"] == theirs["prompt_eval_count"] - 2
    assert ours["eval_duration"] == theirs["eval_duration"] * 6 // 4  # 2 more at the same rate
    assert ours["prompt_eval_duration"] == theirs["prompt_eval_duration"]
    assert ours["load_duration"] == theirs["load_duration"]
    assert ours["total_duration"] == 2_500_000_000
    assert {k: v for k, v in ours.items() if "duration" not in k and "count" not in k} == {
        k: v for k, v in theirs.items() if "duration" not in k and "count" not in k
    }


def test_native_metrics_take_what_the_shell_measured() -> None:
    partial = partial_of(Dialect.CHAT, frames("chat", 2))
    spent = Spent(load_ns=5, prompt_eval_ns=7, eval_ns=11)
    final = lines(make(partial, spent=spent).feed(CAPTURED["chat"]))[-1]
    theirs = lines(CAPTURED["chat"])[-1]
    assert final["load_duration"] == 5
    assert final["prompt_eval_duration"] == 7 + theirs["prompt_eval_duration"]
    assert final["eval_duration"] == 11 + theirs["eval_duration"]


def test_native_prompt_count_reported_earlier_wins_and_zeros_are_left_out() -> None:
    partial = Partial(Dialect.CHAT, text="x" * 40, tokens=40, prompt_tokens=31)
    done = b'{"model":"m","message":{"role":"assistant","content":""},"done":true,'
    done += b'"done_reason":"stop","prompt_eval_count":12,"eval_count":3}\n'
    final = lines(make(partial).feed(done))[-1]
    assert final["prompt_eval_count"] == 31 and final["eval_count"] == 43
    assert "load_duration" not in final and "eval_duration" not in final
    assert list(final)[-2:] == ["prompt_eval_count", "eval_count"]
    no_count = make(Partial(Dialect.CHAT, text="x" * 40, tokens=40)).feed(done)
    assert "prompt_eval_count" not in lines(no_count)[-1]  # 12 - 40 < 0: none, as zero is


def test_native_error_line_passes_and_ends() -> None:
    stitch = make(partial_of(Dialect.CHAT, frames("chat", 2)))
    error = b'{"error":"an error was encountered while running the model"}\n'
    assert stitch.feed(frames("chat", 1)[0] + error) == frames("chat", 1)[0] + error
    assert stitch.ended


def test_an_unterminated_last_line_is_held_until_the_end() -> None:
    stitch = make(partial_of(Dialect.CHAT, frames("chat", 2)))
    raw = CAPTURED["chat"].rstrip(b"\n")
    head = stitch.feed(raw)
    assert not stitch.ended and stitch.held == len(raw.rsplit(b"\n", 1)[1])
    tail = stitch.end()
    assert stitch.ended and stitch.held == 0
    assert lines(head + tail)[-1]["eval_count"] == 6
    assert stitch.end() == b""


def test_openai_chunks_keep_the_original_identity() -> None:
    relayed = frames("openai", 2)
    partial = partial_of(Dialect.OPENAI, relayed)
    doc = {"stream": True, "stream_options": {"include_usage": True}}
    out = make(partial, doc).feed(retagged("openai"))
    original = orjson.loads(relayed[0][6:])
    seen = events(b"".join(relayed) + out)
    assert all(
        d["id"] == original["id"] and d["created"] == original["created"] for _, d in seen[:-1]
    )
    assert [d for _, d in seen].count("[DONE]") == 1 and seen[-1][1] == "[DONE]"
    deltas = [d["choices"][0]["delta"] for _, d in seen if d != "[DONE]" and d["choices"]]
    assert sum("role" in delta for delta in deltas) == 1
    text = "".join(delta.get("content", "") for delta in deltas)
    assert text == "More that" + "More that as blue."
    usage = seen[-2][1]["usage"]
    assert usage == {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}
    # Every chunk but the first and the usage one is the continuation's, byte for byte,
    # under the original's id and created.
    ident = f'"id":"{original["id"]}"'.encode()
    created = f'"created":{original["created"]}'.encode()
    theirs = retagged("openai").split(b"\n\n")[1:4]
    expected = [t.replace(b'"id":"chatcmpl-999"', ident) for t in theirs]
    expected = [t.replace(b'"created":1700000000', created) for t in expected]
    assert out.split(b"\n\n")[1:4] == expected


def test_openai_first_delta_loses_its_role_only() -> None:
    partial = partial_of(Dialect.OPENAI, frames("openai", 2))
    first = make(partial).feed(retagged("openai")).split(b"\n\n")[0]
    doc = orjson.loads(first[6:])
    assert doc["choices"] == [{"index": 0, "delta": {"content": "More"}, "finish_reason": None}]


def test_openai_role_only_first_delta_is_dropped() -> None:
    partial = partial_of(Dialect.OPENAI, frames("openai", 2))
    role_only = frames("openai", 1)[0].replace(b',"content":"More"', b"")
    assert make(partial).feed(role_only) == b""


@pytest.mark.parametrize(
    ("doc", "kept"),
    [
        pytest.param({"stream": True}, False, id="stream without usage: dropped"),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True}}, True, id="asked: kept"
        ),
        pytest.param({}, True, id="not streamed (assembled): kept"),
    ],
)
def test_openai_usage_chunk_only_when_wanted(doc: dict[str, Any], kept: bool) -> None:
    partial = partial_of(Dialect.OPENAI, frames("openai", 2))
    seen = events(make(partial, doc).feed(retagged("openai")))
    assert any(d != "[DONE]" and "usage" in d for _, d in seen) is kept


def test_openai_nothing_relayed_passes_everything() -> None:
    raw = retagged("openai")
    doc = {"stream": True, "stream_options": {"include_usage": True}}
    assert make(Partial(Dialect.OPENAI), doc).feed(raw) == raw


def test_anthropic_the_open_text_block_goes_on() -> None:
    relayed = frames("anthropic", 4)
    partial = partial_of(Dialect.ANTHROPIC, relayed)
    out = make(partial).feed(retagged("anthropic"))
    theirs = retagged("anthropic").split(b"\n\n")
    assert out.split(b"\n\n")[:4] == theirs[2:6]  # deltas byte for byte: no message/block start
    seen = events(b"".join(relayed) + out)
    kinds = [name for name, _ in seen]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert {d["index"] for _, d in seen if "index" in d} == {0}
    assert (
        seen[0][1]["message"]["id"] == orjson.loads(relayed[0].split(b"data: ")[1])["message"]["id"]
    )
    assert seen[-2][1]["usage"] == {"input_tokens": 8, "output_tokens": 6}
    text = "".join(d["delta"]["text"] for name, d in seen if name == "content_block_delta")
    assert text == "More that" + "More that as blue."


def test_anthropic_a_tool_call_after_the_text_gets_the_next_block() -> None:
    partial = partial_of(Dialect.ANTHROPIC, frames("anthropic", 4))
    seen = events(make(partial).feed(retagged("anthropic_tool")))
    assert [(name, d.get("index")) for name, d in seen] == [
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert seen[1][1]["content_block"]["type"] == "tool_use"
    assert seen[4][1]["usage"]["output_tokens"] == 2 + 10


def test_anthropic_no_block_open_yet_takes_the_continuations_block() -> None:
    partial = partial_of(Dialect.ANTHROPIC, frames("anthropic", 1))
    out = make(partial).feed(retagged("anthropic"))
    assert out == b"".join(retagged("anthropic").split(b"\n\n", 1)[1:])  # all but message_start


def test_anthropic_an_empty_continuation_closes_the_open_block() -> None:
    partial = partial_of(Dialect.ANTHROPIC, frames("anthropic", 4))
    empty = [*frames("anthropic", 1), *frames("anthropic")[-2:]]
    ping = b'event: ping\ndata: {"type":"ping"}\n\n'
    seen = events(make(partial).feed(ping + b"".join(empty)))
    assert [(name, d.get("index")) for name, d in seen] == [
        ("content_block_stop", 0),
        ("message_delta", None),
        ("message_stop", None),
    ]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_every_split_of_the_continuation_stitches_the_same(dialect: Dialect) -> None:
    name = STREAMS[dialect]
    partial = partial_of(dialect, frames(name, LEAD[dialect] + 2))
    raw = retagged(name)
    expected = make(partial).feed(raw)
    for cut in range(len(raw) + 1):
        stitch = make(partial)
        assert stitch.feed(raw[:cut]) + stitch.feed(raw[cut:]) == expected, cut
        assert stitch.ended
    stitch = make(partial)
    assert b"".join(stitch.feed(raw[i : i + 1]) for i in range(len(raw))) == expected


@pytest.mark.parametrize("dialect", list(Dialect))
def test_preempted_twice(dialect: Dialect) -> None:
    """Attempt 1 relays two tokens; attempt 2 one more before it too is preempted; attempt 3
    finishes.  The second partial answer is read from everything the client received."""
    name = STREAMS[dialect]
    doc = {"stream": True, "stream_options": {"include_usage": True}}
    first = frames(name, LEAD[dialect] + 2)
    partial = partial_of(dialect, first)
    second = b"".join(make(partial, doc).feed(f) for f in frames(name, LEAD[dialect] + 1))
    partial = partial_of(dialect, [*first, second])
    pieces = FRAMES[name]
    assert partial.tokens == 3 and partial.resumable
    third = make(partial, doc).feed(retagged(name))
    answer = assemble(dialect, [*first, second, third]).doc  # the client's view, well-formed
    if dialect is Dialect.CHAT:
        assert answer["message"]["content"] == "More that" + "More" + "More that as blue."
        assert answer["eval_count"] == 7
    elif dialect is Dialect.GENERATE:
        assert answer["response"] == "So sunsets" + "So" + "So sunsets shorter and"
        assert answer["eval_count"] == 7
    elif dialect is Dialect.OPENAI:
        assert answer["choices"][0]["message"]["content"].startswith("More thatMore")
        assert answer["usage"]["completion_tokens"] == 7
        assert answer["id"] == orjson.loads(pieces[0][6:])["id"]
    else:
        assert answer["content"][0]["text"].startswith("More thatMore")
        assert answer["usage"]["output_tokens"] == 7
    assert len(third) > 0


def test_openai_chunks_laid_out_otherwise_are_rewritten_field_by_field() -> None:
    relayed = frames("openai", 2)
    partial = partial_of(Dialect.OPENAI, relayed)
    original = orjson.loads(relayed[0][6:])
    chunk: dict[str, Any] = {
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]
    }
    chunk |= {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    stitch = make(partial)
    stitch.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")  # the first: loses its (absent) role
    out = events(stitch.feed(b"data: " + orjson.dumps(chunk) + b"\n\n"))
    assert out == [("", {**chunk, "id": original["id"], "created": original["created"]})]
