"""``/v1/messages`` through the official ``anthropic`` SDK and at the byte level.

The contract is docs/anthropic.md; each test names the section it pins.
"""

# ruff: noqa: E501  (the error tables read best one case per line)

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest

from ollama_emulator import EmulatedNode
from tests.harness.emulator import MakeNode
from tests.harness.eventually import eventually

MSG_ID = re.compile(r"^msg_[0-9a-f]{24}$")
REQ_ID = re.compile(r"^req_[0-9a-f]{24}$")
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather at a place",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "a city"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
}


@pytest.fixture
async def thinker(make_node: MakeNode) -> EmulatedNode:
    """A node with a thinking, tool-calling model (qwen3) and a plain one resident."""
    return await make_node(
        installed=["qwen3:8b", "llama3.2", "tiny:1b", "nomic-embed-text"],
        loaded=["qwen3:8b", "llama3.2"],
    )


@pytest.fixture
async def claude(thinker: EmulatedNode) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # Claude Code's settings from `ollama launch claude`: the key is sent and ignored.
    async with anthropic.AsyncAnthropic(
        base_url=thinker.url, api_key="ollama", max_retries=0
    ) as client:
        yield client


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``event:``/``data:`` pairs; fails on anything else (ping, comments, [DONE])."""
    text = raw.decode()
    assert text.endswith("\n\n") or not text, text[-80:]
    out = []
    for frame in text.split("\n\n")[:-1]:
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), frame
        payload = json.loads(data.removeprefix("data: "))
        assert event.removeprefix("event: ") == payload["type"]
        assert data == "data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        out.append((payload["type"], payload))
    return out


async def post(
    http: aiohttp.ClientSession, node: EmulatedNode, body: Any, **kw: Any
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(node.url + "/v1/messages", data=data, **kw) as r:
        return r.status, r.headers, await r.read()


# ------------------------------------------------------------------ SDK: create
async def test_create(claude: anthropic.AsyncAnthropic) -> None:
    reply = await claude.messages.create(model="llama3.2", max_tokens=100, messages=HI)
    assert MSG_ID.match(reply.id) and reply.model == "llama3.2"  # echoed verbatim
    assert reply.type == "message" and reply.role == "assistant"
    assert [b.type for b in reply.content] == ["text"]
    text = reply.content[0]
    assert text.type == "text" and text.text.endswith(".")
    assert reply.stop_reason == "end_turn"
    assert reply.usage.output_tokens == 24 and reply.usage.input_tokens > 0


async def test_max_tokens_cuts_the_answer(claude: anthropic.AsyncAnthropic) -> None:
    reply = await claude.messages.create(model="llama3.2", max_tokens=4, messages=HI)
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 4


async def test_non_stream_bytes(thinker: EmulatedNode, http: aiohttp.ClientSession) -> None:
    """anthropic.md §4.1, §11: one JSON object + newline, no ``stop_sequence`` key, two usage keys."""
    status, headers, raw = await post(
        http, thinker, {"model": "llama3.2", "max_tokens": 100, "messages": HI}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert raw.endswith(b"}\n")
    doc = json.loads(raw)
    assert list(doc) == ["id", "type", "role", "model", "content", "stop_reason", "usage"]
    assert list(doc["usage"]) == ["input_tokens", "output_tokens"]


# ------------------------------------------------------------------ SDK: stream
async def test_stream_with_the_sdk(claude: anthropic.AsyncAnthropic) -> None:
    whole = await claude.messages.create(model="llama3.2", max_tokens=100, messages=HI)
    async with claude.messages.stream(model="llama3.2", max_tokens=100, messages=HI) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    deltas = kinds.count("content_block_delta")
    raw_kinds = [k for k in kinds if k not in ("text",)]  # the helper adds "text" events
    assert raw_kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas == 24
    assert final.content[0].type == "text" and whole.content[0].type == "text"
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 24


async def test_stream_bytes(thinker: EmulatedNode, http: aiohttp.ClientSession) -> None:
    """anthropic.md §5.1–5.2, §12.2: exact framing and event sequence, no ping, no [DONE]."""
    body = {"model": "llama3.2", "max_tokens": 100, "messages": HI, "stream": True}
    status, headers, raw = await post(http, thinker, body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    assert b"ping" not in raw and b"[DONE]" not in raw and b"\nid:" not in raw
    events = frames(raw)
    kinds = [k for k, _ in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 24,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert MSG_ID.match(start["id"]) and start["model"] == "llama3.2" and start["content"] == []
    assert "stop_reason" not in start and "stop_sequence" not in start
    # the len/4 estimate: (len("user") + len("Hi")) / 4 = 1
    assert start["usage"] == {"input_tokens": 1, "output_tokens": 0}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(e["delta"]["type"] == "text_delta" and e["index"] == 0 for _, e in events[2:-3])
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn"}
    assert delta["usage"]["output_tokens"] == 24 and delta["usage"]["input_tokens"] > 0
    assert events[-1][1] == {"type": "message_stop"}


async def test_drop_fault_ends_the_stream_silently(
    thinker: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    """anthropic.md §5.7: a failure after the first event just ends the stream: no error, no message_stop."""
    thinker.faults.drop_after(5, times=1, paths="/v1/messages")
    body = {"model": "llama3.2", "max_tokens": 100, "messages": HI, "stream": True}
    status, _, raw = await post(http, thinker, body)
    assert status == 200
    kinds = [k for k, _ in frames(raw)]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 3]
    # Counted once the runner notices and frees the slot, about a token later.
    await eventually(lambda: thinker.stats.generations_cancelled == 1)


# ------------------------------------------------------------------ errors
async def test_unknown_model_is_anthropics_404(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        await claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI)
    assert err.value.status_code == 404
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"] == {
        "type": "not_found_error",
        "message": "model 'claude-sonnet-4-5' not found",
    }
    assert REQ_ID.match(body["request_id"])


async def test_max_tokens_zero_is_refused_by_the_server(
    claude: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.create(model="llama3.2", max_tokens=0, messages=HI)
    assert err.value.status_code == 400
    assert isinstance(err.value.body, dict)
    assert err.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive",
    }


async def test_errors_keep_their_status_when_streaming(
    thinker: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    """anthropic.md §5.7: before the first byte an error is a JSON answer with its real status."""
    body = {"model": "nope", "max_tokens": 10, "messages": HI, "stream": True}
    status, headers, raw = await post(http, thinker, body)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-cache"
    assert raw.endswith(b"}\n")  # written by the handler's json.Encoder
    assert json.loads(raw)["error"]["type"] == "not_found_error"


def _err(kind: str, message: str) -> tuple[str, str]:
    return kind, message


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param(b"", 400, _err("invalid_request_error", "EOF"), id="empty body"),
        pytest.param(
            b"{invalid json",
            400,
            _err("invalid_request_error", "invalid character 'i' looking for beginning of object key string"),
            id="malformed JSON",
        ),
        pytest.param(
            {"max_tokens": 10, "messages": HI}, 400,
            _err("invalid_request_error", "model is required"), id="no model",
        ),
        pytest.param(
            {"model": "llama3.2", "messages": HI}, 400,
            _err("invalid_request_error", "max_tokens is required and must be positive"),
            id="max_tokens missing",
        ),
        pytest.param(
            {"model": "llama3.2", "max_tokens": 10, "messages": []}, 400,
            _err("invalid_request_error", "messages is required"), id="no messages",
        ),
        pytest.param(
            {"model": "llama3.2", "max_tokens": "10", "messages": HI}, 400,
            _err("invalid_request_error", "json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"),
            id="max_tokens a string",
        ),
        pytest.param(
            {"model": "llama3.2", "max_tokens": 10, "messages": HI, "tool_choice": "auto"}, 400,
            _err("invalid_request_error", "json: cannot unmarshal string into Go struct field MessagesRequest.tool_choice of type anthropic.ToolChoice"),
            id="tool_choice a bare string",
        ),
        pytest.param(
            {"model": "llama3.2", "max_tokens": 10, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}, 400,
            _err("invalid_request_error", "invalid image source type: url. Only base64 images are supported."),
            id="image by url",
        ),
        pytest.param(
            {"model": "llama3.2", "max_tokens": 10, "messages": [{"role": "assistant", "content": [
                {"type": "tool_use", "name": "f", "input": {}}]}]}, 400,
            _err("invalid_request_error", "tool_use block missing required 'id' field"),
            id="tool_use without id",
        ),
        pytest.param(
            {"model": "nomic-embed-text", "max_tokens": 10, "messages": HI}, 400,
            _err("invalid_request_error", '"nomic-embed-text" does not support chat'),
            id="embedding model",
        ),
        pytest.param(
            {"model": "tiny:1b", "max_tokens": 10, "messages": HI, "tools": [WEATHER]}, 400,
            _err("invalid_request_error", "registry.ollama.ai/library/tiny:1b does not support tools"),
            id="model without tools",
        ),
        pytest.param(
            {"model": "Nope:X", "max_tokens": 10, "messages": HI}, 404,
            _err("not_found_error", "model 'Nope:X' not found"), id="unknown model echoed",
        ),
    ],
)  # fmt: skip
async def test_error_bodies(
    thinker: EmulatedNode,
    http: aiohttp.ClientSession,
    body: Any,
    status: int,
    expected: tuple[str, str],
) -> None:
    """anthropic.md §6: Anthropic's body; the status picks the type."""
    got, _, raw = await post(http, thinker, body)
    assert got == status
    doc = json.loads(raw)
    assert list(doc) == ["type", "error", "request_id"] and doc["type"] == "error"
    assert (doc["error"]["type"], doc["error"]["message"]) == expected


async def test_overloaded_is_503(claude: anthropic.AsyncAnthropic, thinker: EmulatedNode) -> None:
    thinker.faults.fail_next(status=503, message="server busy", paths="/v1/messages")
    with pytest.raises(anthropic.APIStatusError) as err:
        await claude.messages.create(model="llama3.2", max_tokens=10, messages=HI)
    assert err.value.status_code == 503
    assert isinstance(err.value.body, dict)
    assert err.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        pytest.param("POST", "/v1/messages/count_tokens", 404, "404 page not found", id="count_tokens"),
        pytest.param("GET", "/v1/messages", 405, "405 method not allowed", id="GET"),
    ],
)  # fmt: skip
async def test_routes_ollama_does_not_serve(
    thinker: EmulatedNode,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
    text: str,
) -> None:
    async with http.request(method, thinker.url + path, json={}) as r:
        assert (r.status, await r.text()) == (status, text)
        assert r.headers["Content-Type"] == "text/plain"


# ------------------------------------------------------------------ tools
async def test_tool_use_round_trip(claude: anthropic.AsyncAnthropic) -> None:
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    reply = await claude.messages.create(
        model="qwen3:8b", max_tokens=200, messages=ask, tools=[WEATHER],
        thinking={"type": "disabled"},
    )  # fmt: skip
    assert reply.stop_reason == "tool_use"
    [call] = reply.content
    assert call.type == "tool_use" and CALL_ID.match(call.id) and call.name == "get_weather"
    assert isinstance(call.input, dict) and call.input["unit"] == "celsius"  # the enum's first
    assert isinstance(call.input["location"], str) and call.input["location"]
    answer = await claude.messages.create(
        model="qwen3:8b",
        max_tokens=200,
        tools=[WEATHER],
        thinking={"type": "disabled"},
        messages=[
            *ask,
            {"role": "assistant", "content": [call.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"


async def test_tool_use_stream(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="qwen3:8b", max_tokens=200, tools=[WEATHER], thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:  # fmt: skip
        events = [e async for e in stream]
        final = await stream.get_final_message()
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert len(deltas) == 1 and deltas[0].delta.type == "input_json_delta"
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert json.loads(deltas[0].delta.partial_json) == final.content[0].input


# ------------------------------------------------------------------ thinking
async def test_thinking_models_think_by_default(claude: anthropic.AsyncAnthropic) -> None:
    """anthropic.md §3.6: thinking is on for thinking-capable models unless turned off."""
    reply = await claude.messages.create(model="qwen3:8b", max_tokens=200, messages=HI)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    thinking = reply.content[0]
    assert thinking.type == "thinking" and thinking.thinking
    assert "signature" not in thinking.model_dump(exclude_unset=True)
    off = await claude.messages.create(
        model="qwen3:8b", max_tokens=200, messages=HI, thinking={"type": "disabled"}
    )
    assert [b.type for b in off.content] == ["text"]
    assert reply.usage.output_tokens > off.usage.output_tokens  # thinking tokens count
    plain = await claude.messages.create(
        model="llama3.2",
        max_tokens=200,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [b.type for b in plain.content] == ["text"]  # quietly ignored, no 400


async def test_thinking_then_tool_call_stream(
    thinker: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    """anthropic.md §12.3: thinking block 0, tool_use block 1 with one input_json_delta, tool_use."""
    body = {
        "model": "qwen3:8b",
        "max_tokens": 200,
        "stream": True,
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "cats or dogs?"}],
    }
    status, _, raw = await post(http, thinker, body)
    assert status == 200
    events = frames(raw)
    kinds = [k for k, _ in events]
    thinking = kinds.count("content_block_delta") - 1
    assert thinking >= 1
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * thinking,
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": ""}
    assert all(e["delta"]["type"] == "thinking_delta" for _, e in events[2 : 2 + thinking])
    start = events[3 + thinking][1]
    assert start["index"] == 1 and start["content_block"]["input"] == {}
    assert CALL_ID.match(start["content_block"]["id"])
    delta = events[4 + thinking][1]
    assert delta["index"] == 1 and delta["delta"]["type"] == "input_json_delta"
    assert json.loads(delta["delta"]["partial_json"])["unit"] == "celsius"
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use"}


# ------------------------------------------------------------------ edges
async def test_all_messages_empty_loads_the_model(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    """anthropic.md §4.3: nothing to say is a load: content null, stop_sequence, usage 0/0."""
    node = await make_node(installed=["llama3.2"])
    body = {"model": "llama3.2", "max_tokens": 10, "messages": [{"role": "user", "content": ""}]}
    status, _, raw = await post(http, node, body)
    assert status == 200
    doc = json.loads(raw)
    assert doc["content"] is None and doc["stop_reason"] == "stop_sequence"
    assert doc["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert node.stats.loads_completed == 1 and node.scheduler.runners


async def test_keys_match_without_case_and_extra_fields_are_ignored(
    thinker: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    """anthropic.md §3.1, §3.2: ``Model`` works, unknown keys (and keep_alive/options) are dropped."""
    body = {
        "Model": "llama3.2",
        "MAX_TOKENS": 3,
        "messages": HI,
        "service_tier": "auto",
        "options": {"num_ctx": 99},
        "metadata": {"user_id": "u1"},
    }
    status, _, raw = await post(http, thinker, body, headers={"anthropic-version": "2023-06-01"})
    assert status == 200
    doc = json.loads(raw)
    assert doc["stop_reason"] == "max_tokens" and doc["model"] == "llama3.2"
    [runner] = [r for r in thinker.scheduler.runners.values() if r.name == "llama3.2:latest"]
    assert runner.num_ctx != 99  # /v1/messages cannot set num_ctx
