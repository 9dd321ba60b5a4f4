"""Reading a request body (requests.py): orjson first, the standard library for what it refuses,
and the affinity hash over what the opening messages are."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from ollama_balancer.core.requests import (
    SESSION_HEADERS,
    InvalidRequest,
    affinity_key,
    parse_request,
    session_header,
)

KEY = "registry.ollama.ai/library/llama3:latest"
IMG = "iVBORw0KGgo" + "A" * 4096
USER = {"role": "user", "content": "hi"}
SYSTEM = {"role": "system", "content": "be brief"}


def chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "llama3", "messages": list(messages)}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param(chat(SYSTEM, USER), chat(SYSTEM, USER), True, id="same opening"),
        pytest.param(
            chat(SYSTEM, USER),
            chat(SYSTEM, USER, {"role": "assistant", "content": "hello"}, USER),
            True,
            id="later turns do not count",
        ),
        pytest.param(chat(SYSTEM, USER), chat(USER), False, id="system prompt counts"),
        pytest.param(
            chat({**USER, "images": [IMG]}),
            chat({**USER, "images": [IMG[:-1] + "B"]}),
            False,
            id="image bytes count",
        ),
        pytest.param(
            chat({**USER, "images": [IMG, "x"]}),
            chat({**USER, "images": ["x", IMG]}),
            False,
            id="image order counts",
        ),
        pytest.param(
            chat({"role": "user", "content": "ab", "images": None}),
            chat({"role": "user", "content": "a", "images": "b"}),
            False,
            id="field boundaries count",
        ),
        pytest.param(
            chat({**USER, "name": "x", "extra": {"b": 1, "a": 2}}),
            chat({"extra": {"a": 2, "b": 1}, "name": "x", **USER}),
            True,
            id="key order does not count",
        ),
        pytest.param(
            chat({"role": "user", "content": [{"type": "text", "text": "hi"}]}),
            chat({"role": "user", "content": [{"text": "hi", "type": "text"}]}),
            True,
            id="content parts, key order",
        ),
        pytest.param(
            {"model": "llama3", "system": "s", "prompt": "p"},
            {"model": "llama3", "system": "s", "prompt": "q"},
            True,
            id="generate: the system prompt",
        ),
    ],
)
def test_affinity_key(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    ka, kb = affinity_key(a, KEY, None), affinity_key(b, KEY, None)
    assert ka is not None and ka.startswith("p:")
    assert (ka == kb) is same


@pytest.mark.parametrize(
    ("doc", "session", "expected"),
    [
        pytest.param(chat(USER), "abc", "s:abc", id="session id wins"),
        pytest.param(chat(SYSTEM), None, None, id="no user turn yet"),
        pytest.param({"model": "llama3", "prompt": "p"}, None, None, id="generate without system"),
    ],
)
def test_affinity_key_without_hash(
    doc: dict[str, Any], session: str | None, expected: str | None
) -> None:
    assert affinity_key(doc, KEY, session) == expected


@pytest.mark.parametrize(
    ("doc", "session", "expected"),
    [
        pytest.param(
            {**chat(USER), "prompt_cache_key": "conv-1", "user": "u1"},
            "hdr",
            "s:hdr",
            id="a session header beats the body",
        ),
        pytest.param(
            {**chat(USER), "prompt_cache_key": "conv-1", "metadata": {"user_id": "x"}},
            None,
            "k:conv-1",
            id="prompt_cache_key beats metadata.user_id",
        ),
        pytest.param(
            {**chat(USER), "metadata": {"user_id": "user_ab_session_42"}, "user": "u1"},
            None,
            "u:user_ab_session_42",
            id="metadata.user_id beats user",
        ),
        pytest.param({**chat(USER), "user": "u1"}, None, "u:u1", id="user beats the hash"),
        pytest.param(
            {**chat(USER), "prompt_cache_key": "  ", "user": ""},
            None,
            None,
            id="blank names do not count (the hash does)",
        ),
        pytest.param(
            {"model": "llama3", "prompt": "p", "metadata": "not a mapping", "user": 7},
            None,
            None,
            id="wrong types are ignored",
        ),
    ],
)
def test_affinity_key_precedence(
    doc: dict[str, Any], session: str | None, expected: str | None
) -> None:
    got = affinity_key(doc, KEY, session)
    if expected is None and "messages" in doc:
        assert got is not None and got.startswith("p:")
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"x-session-id": "ours"}, "ours", id="ours, any case"),
        pytest.param({"X-Claude-Code-Session-Id": "cc"}, "cc", id="Claude Code"),
        pytest.param({"session_id": "codex"}, "codex", id="Codex CLI"),
        pytest.param({"x-opencode-session": "oc"}, "oc", id="OpenCode"),
        pytest.param({"X-Qwen-Code-Session-Id": "qw"}, "qw", id="Qwen Code"),
        pytest.param(
            {"session_id": "codex", "X-Session-ID": "ours"}, "ours", id="ours before agents'"
        ),
        pytest.param({"X-Session-ID": " ", "session_id": "codex"}, "codex", id="blank skipped"),
    ],
)
def test_session_header(headers: dict[str, str], expected: str | None) -> None:
    assert session_header(CIMultiDict(headers)) == expected
    assert SESSION_HEADERS[0] == "X-Session-ID"


def test_affinity_key_depends_on_the_model() -> None:
    other = "registry.ollama.ai/library/qwen3:latest"
    assert affinity_key(chat(USER), KEY, None) != affinity_key(chat(USER), other, None)


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        pytest.param(
            b'{"model": "llama3", "prompt": "\\ud800"}',
            lambda doc: doc["prompt"] == "\ud800",
            id="lone surrogate escape (Go and Python accept it)",
        ),
    ],
)
def test_bodies_orjson_refuses_are_still_read(raw: bytes, check: Any) -> None:
    req = parse_request(raw, "/api/generate", None)
    assert check(req.doc)
    assert req.body == raw  # forwarded untouched
    pinned = parse_request(raw.replace(b'"llama3"', b'"llama3@a"'), "/api/generate", None)
    assert pinned.pin == "a" and check(json.loads(pinned.body))  # re-encoded without loss


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"{not json", "invalid JSON: Expecting property name", id="syntax"),
        pytest.param(b"\xff\xfe{}", "invalid JSON: ", id="not utf-8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "invalid JSON: nested", id="deep"),
        pytest.param(b"[1, 2]", "invalid JSON: expected an object", id="not an object"),
        pytest.param(
            b'{"model":"x","a":' + b"[" * 64 + b"]" * 64 + b"}",
            "invalid JSON: nested deeper than 64 levels",
            id="one level too deep",
        ),
    ],
)
def test_invalid_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw, "/api/chat", None)
    assert info.value.message.startswith(message)


def test_depth_limit_is_exact() -> None:
    ok = b'{"model":"x","a":' + b"[" * 62 + b"]" * 62 + b"}"
    assert parse_request(ok, "/api/chat", None).model == "x"


def test_request_ids_are_unique_hex() -> None:
    from ollama_balancer.context import _Ids, new_request_id

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    prefix = next(iter(ids))[:16]
    _Ids.reset()  # what a forked worker does: a new random prefix
    assert new_request_id()[:16] != prefix


async def test_balancer_tests_run_on_the_production_loop() -> None:
    """conftest's pytest_asyncio_loop_factories: what these tests exercise is what runs."""
    import asyncio

    from ollama_wire.loop import loop_name

    assert loop_name(asyncio.get_running_loop()) == "uvloop"
