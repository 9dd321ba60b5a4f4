"""The pure halves of ``/v1/messages``: request conversion and the event state machine.

Tables from docs/anthropic.md §3, §4.2, §5.3 and §8.
"""

# ruff: noqa: E501  (tables read best one case per line)

from __future__ import annotations

import json
from typing import Any

import pytest

from ollama_emulator.anthropic_request import (
    NativeMessage,
    RequestError,
    estimate_input_tokens,
    parse_request,
)
from ollama_emulator.anthropic_stream import (
    EventStream,
    NativeChunk,
    ToolCall,
    message_body,
    sse,
    stop_reason,
)

BASE = {"model": "m", "max_tokens": 10}


def parse(**fields: Any) -> Any:
    return parse_request(json.dumps({**BASE, **fields}).encode())


# ------------------------------------------------------------------ request
@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([{"role": "user", "content": "Hello"}], [NativeMessage("user", "Hello")], id="string content"),
        pytest.param([{"role": "USER", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                     [NativeMessage("user", "ab")], id="texts joined without separator, role lower-cased"),
        pytest.param([{"role": "user", "content": ""}, {"role": "user", "content": []}], [], id="empty messages vanish"),
        pytest.param([{"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"},
                                                        {"type": "thinking", "thinking": "y"}, {"type": "text", "text": "t"}]}],
                     [NativeMessage("assistant", "t", thinking="y")], id="last thinking wins"),
        pytest.param(
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "call_123", "name": "get_weather", "input": {"location": "Paris"}}]},
             {"role": "user", "content": [{"type": "text", "text": "and?"}, {"type": "tool_result", "tool_use_id": "call_123", "content": "Sunny, 22°C"}]}],
            [NativeMessage("assistant", tool_calls=({"id": "call_123", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}},)),
             NativeMessage("tool", "Sunny, 22°C", tool_call_id="call_123"),
             NativeMessage("user", "and?")],
            id="tool results come before the user's text",
        ),
        pytest.param([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "document"}]}]}],
                     [NativeMessage("tool", "ab", tool_call_id="t")], id="tool_result parts"),
        pytest.param([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 7}]}],
                     [NativeMessage("tool", "", tool_call_id="t")], id="tool_result number is empty"),
        pytest.param([{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}, {"type": "text", "text": "k"}]}],
                     [NativeMessage("user", "k")], id="unknown blocks dropped"),
        pytest.param([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "AAAA"}}]}],
                     [NativeMessage("user", images=1)], id="base64 image, media type unchecked"),
        pytest.param([{"role": "user", "content": [{"type": "web_search_tool_result", "tool_use_id": "s", "content": [
            {"type": "web_search_result", "title": "T", "url": "https://u"}]}]}],
                     [NativeMessage("tool", "- T: https://u\n", tool_call_id="s")], id="web search results rendered"),
    ],
)  # fmt: skip
def test_messages_become_native_messages(
    messages: list[Any], expected: list[NativeMessage]
) -> None:
    assert list(parse(messages=messages).messages) == expected


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        pytest.param("be brief", [NativeMessage("system", "be brief")], id="string"),
        pytest.param([{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "image"}, {"type": "text", "text": "b"}],
                     [NativeMessage("system", "ab")], id="array: texts joined"),
        pytest.param("", [], id="empty string"),
        pytest.param(42, [], id="a number is no system"),
    ],
)  # fmt: skip
def test_system(system: Any, expected: list[NativeMessage]) -> None:
    got = parse(system=system, messages=[{"role": "user", "content": "x"}]).messages
    assert list(got[:-1]) == expected


@pytest.mark.parametrize(
    ("fields", "think"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"thinking": {"type": "enabled", "budget_tokens": 5}}, True, id="enabled"),
        pytest.param({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, False, id="disabled wins"),
        pytest.param({"thinking": {"type": "adaptive"}, "output_config": {"effort": " XHigh "}}, "high", id="xhigh is high"),
        pytest.param({"output_config": {"effort": "low"}}, "low", id="effort alone"),
        pytest.param({"output_config": {"effort": "extreme"}}, None, id="unknown effort"),
    ],
)  # fmt: skip
def test_thinking(fields: dict[str, Any], think: Any) -> None:
    assert parse(messages=[{"role": "user", "content": "x"}], **fields).think == think


def test_options_and_tools() -> None:
    req = parse(
        max_tokens=2048, temperature=0.7, top_p=0.9, top_k=40, stop_sequences=["\n", "END"],
        messages=[{"role": "user", "content": "Hello"}],
        tools=[
            {"name": "f", "description": "d", "input_schema": {"type": "object", "additionalProperties": False,
             "properties": {"a": {"type": "string", "title": "A", "enum": ["x"]}}, "required": ["a"]}},
            {"name": "web_search", "description": "mine"},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
    )  # fmt: skip
    assert req.options == {
        "num_predict": 2048,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n", "END"],
    }
    assert [t.name for t in req.tools] == ["f", "web_search"]
    assert req.tools[0].parameters == {
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": "string", "enum": ["x"]}},
    }
    assert req.tools[1].web_search and req.tools[1].description != "mine"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"null", "model is required", id="null body"),
        pytest.param(b"[]", "json: cannot unmarshal array into Go value of type anthropic.MessagesRequest", id="array body"),
        pytest.param(b'{"model":"m","max_tokens":100.5}', "json: cannot unmarshal number 100.5 into Go struct field MessagesRequest.max_tokens of type int", id="float max_tokens"),
        pytest.param(b'{"model":"m","max_tokens":-1,"messages":[]}', "max_tokens is required and must be positive", id="negative max_tokens"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":1,"content":"x"}]}', "json: cannot unmarshal number into Go struct field MessageParam.messages.role of type string", id="role a number"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"user"}]}', "unexpected end of JSON input", id="content missing"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":5}]}', "json: cannot unmarshal number into Go value of type []anthropic.ContentBlock", id="content a number"),
        pytest.param(b'{"model":"m","max_tokens":1,"metadata":{"user_id":5},"messages":[{"role":"user","content":"x"}]}', "json: cannot unmarshal number into Go struct field Metadata.metadata.user_id of type string", id="user_id a number"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image"}]}]}', "invalid image source", id="image without source"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"AAA"}}]}]}', "invalid base64 image data: illegal base64 data at input byte 0", id="base64 without padding"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image"}]}]}]}', "invalid tool_result image source", id="tool_result image"),
        pytest.param(b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"c"}]}]}', "tool_use block missing required 'name' field", id="tool_use without name"),
        pytest.param(b'{"model":"m","max_tokens":1,"tools":[{"name":"f","input_schema":"x"}],"messages":[{"role":"user","content":"x"}]}', 'invalid input_schema for tool "f": json: cannot unmarshal string into Go value of type api.ToolFunctionParameters', id="schema a string"),
    ],
)  # fmt: skip
def test_refusals(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(body)
    assert err.value.message == message


def test_go_decoding_rules() -> None:
    """anthropic.md §3.2: case-insensitive keys, the last duplicate wins, null is absent, trailing bytes ignored."""
    raw = b'{"MODEL":"a","model":"b","max_tokens":5,"Max_Tokens":7,"stream":null,"messages":[{"role":"user","content":"x"}]} trailing'
    req = parse_request(raw)
    assert (req.model, req.max_tokens, req.stream) == ("b", 7, False)


@pytest.mark.parametrize(
    ("doc", "tokens"),
    [
        pytest.param({"messages": [{"role": "user", "content": "Hi"}]}, 1, id="Hi is (4+2)/4"),
        pytest.param({}, 0, id="nothing"),
        pytest.param({"system": "x"}, 1, id="a system prompt is at least 1"),
        pytest.param({"system": [{"type": "text", "text": "a" * 40}], "messages": [{"role": "user", "content": [{"type": "text", "text": "b" * 36}]}]}, 20, id="(40+4+36)/4"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "image", "source": {"data": "A" * 400}}]}]}, 1, id="images count 0"),
        pytest.param({"messages": [{"role": "user", "content": "é" * 6}]}, 4, id="UTF-8 bytes (4+12)/4"),
    ],
)  # fmt: skip
def test_estimate(doc: dict[str, Any], tokens: int) -> None:
    assert estimate_input_tokens(doc) == tokens


# ------------------------------------------------------------------ answers
@pytest.mark.parametrize(
    ("done_reason", "tools", "expected"),
    [
        pytest.param("stop", False, "end_turn", id="stop"),
        pytest.param("length", False, "max_tokens", id="length"),
        pytest.param("length", True, "tool_use", id="a tool call wins"),
        pytest.param("load", False, "stop_sequence", id="any other reason"),
        pytest.param("", False, "", id="empty: key left out"),
    ],
)
def test_stop_reason(done_reason: str, tools: bool, expected: str) -> None:
    assert stop_reason(done_reason, tools) == expected


def test_message_body_orders_and_omits() -> None:
    body = message_body(
        "msg_1", "m", thinking="hmm", text="hi", tool_calls=[ToolCall("call_a", "f", None)],
        done_reason="stop", input_tokens=10, output_tokens=5,
    )  # fmt: skip
    assert [b["type"] for b in body["content"]] == ["thinking", "text", "tool_use"]
    assert body["content"][2] == {"type": "tool_use", "id": "call_a", "name": "f"}  # no input
    assert body["stop_reason"] == "tool_use" and "stop_sequence" not in body
    empty = message_body(
        "msg_1", "m", thinking="", text="", tool_calls=[], done_reason="",
        input_tokens=0, output_tokens=0,
    )  # fmt: skip
    assert empty["content"] is None and "stop_reason" not in empty


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = []
    for name, data in events:
        block = data.get("content_block") or data.get("delta") or {}
        detail = block.get("type", "") if name != "message_delta" else block.get("stop_reason", "")
        parts = [name, str(data.get("index", "")), detail]
        out.append(":".join(p for p in parts if p))
    return out


def feed(*chunks: NativeChunk) -> list[tuple[str, dict[str, Any]]]:
    stream = EventStream("msg_x", "test-model", estimate=1)
    return [event for chunk in chunks for event in stream.feed(chunk)]


DONE = NativeChunk(done=True, done_reason="stop", prompt_eval_count=10, eval_count=5)
CALL = ToolCall("call_abc", "ask_user", {"question": "cats or dogs?"})


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param(
            [NativeChunk(content="Hello "), NativeChunk(content="world"), DONE],
            ["message_start", "content_block_start:0:text", "content_block_delta:0:text_delta", "content_block_delta:0:text_delta",
             "content_block_stop:0", "message_delta:end_turn", "message_stop"],
            id="text only (anthropic.md §12.2)",
        ),
        pytest.param(
            [NativeChunk(thinking="I should call the tool."), NativeChunk(tool_calls=[CALL], done=True, done_reason="stop", prompt_eval_count=10, eval_count=5)],
            ["message_start", "content_block_start:0:thinking", "content_block_delta:0:thinking_delta", "content_block_stop:0",
             "content_block_start:1:tool_use", "content_block_delta:1:input_json_delta", "content_block_stop:1",
             "message_delta:tool_use", "message_stop"],
            id="thinking then tool (anthropic.md §12.3)",
        ),
        pytest.param(
            [NativeChunk(content="a"), NativeChunk(thinking="b"), NativeChunk(content="c"), DONE],
            ["message_start", "content_block_start:0:text", "content_block_delta:0:text_delta", "content_block_stop:0",
             "content_block_start:1:thinking", "content_block_delta:1:thinking_delta", "content_block_stop:1",
             "content_block_start:2:text", "content_block_delta:2:text_delta", "content_block_stop:2",
             "message_delta:end_turn", "message_stop"],
            id="text, thinking, text",
        ),
        pytest.param(
            [NativeChunk(thinking="a"), NativeChunk(content="b"), NativeChunk(thinking="late"), DONE],
            ["message_start", "content_block_start:0:thinking", "content_block_delta:0:thinking_delta", "content_block_stop:0",
             "content_block_start:1:text", "content_block_delta:1:text_delta", "content_block_stop:1",
             "message_delta:end_turn", "message_stop"],
            id="thinking after its block closed is dropped",
        ),
        pytest.param(
            [NativeChunk(tool_calls=[CALL]), NativeChunk(tool_calls=[CALL]), NativeChunk(content="after"), DONE],
            ["message_start", "content_block_start:0:tool_use", "content_block_delta:0:input_json_delta", "content_block_stop:0",
             "content_block_start:1:text", "content_block_delta:1:text_delta", "content_block_stop:1",
             "message_delta:tool_use", "message_stop"],
            id="calls de-duplicated by id, text after a call opens a new block",
        ),
        pytest.param(
            [NativeChunk(done=True, done_reason="")],
            ["message_start", "message_delta", "message_stop"],
            id="empty generation, no stop reason",
        ),
    ],
)  # fmt: skip
def test_event_sequences(chunks: list[NativeChunk], expected: list[str]) -> None:
    assert kinds(feed(*chunks)) == expected


def test_event_payloads() -> None:
    events = feed(NativeChunk(thinking="I should call the tool."), NativeChunk(tool_calls=[CALL], done=True, done_reason="stop", prompt_eval_count=10, eval_count=5))  # fmt: skip
    assert events[0][1]["message"]["usage"] == {"input_tokens": 1, "output_tokens": 0}
    assert events[4][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_abc",
        "name": "ask_user",
        "input": {},
    }
    assert events[5][1]["delta"] == {
        "type": "input_json_delta",
        "partial_json": '{"question":"cats or dogs?"}',
    }
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use"},
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    assert sse(events[-1]) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def test_first_chunk_count_replaces_the_estimate() -> None:
    stream = EventStream("msg_x", "m", estimate=1)
    [(_, start), *_] = stream.feed(NativeChunk(content="x", prompt_eval_count=33))
    assert start["message"]["usage"]["input_tokens"] == 33
