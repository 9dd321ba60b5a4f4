"""Error bodies per path (kernel, pure): native, OpenAI, Anthropic (docs/anthropic.md §6)."""

from __future__ import annotations

import re

import pytest

from ollama_wire.errors import (
    anthropic_error_body,
    anthropic_error_type,
    error_body_for,
    is_anthropic_path,
    is_openai_path,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        pytest.param(400, "invalid_request_error", id="400"),
        pytest.param(401, "authentication_error", id="401"),
        pytest.param(403, "permission_error", id="403"),
        pytest.param(404, "not_found_error", id="404"),
        pytest.param(429, "rate_limit_error", id="429"),
        pytest.param(503, "overloaded_error", id="503"),
        pytest.param(529, "overloaded_error", id="529"),
        pytest.param(413, "api_error", id="413 is not special"),
        pytest.param(499, "api_error", id="499"),
        pytest.param(500, "api_error", id="500"),
        pytest.param(502, "api_error", id="502"),
    ],
)
def test_anthropic_error_type_from_status(status: int, kind: str) -> None:
    assert anthropic_error_type(status) == kind


def test_anthropic_body_shape() -> None:
    body = anthropic_error_body(404, "model 'x' not found")
    assert list(body) == ["type", "error", "request_id"]
    assert body["type"] == "error"
    assert body["error"] == {"type": "not_found_error", "message": "model 'x' not found"}
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])
    assert anthropic_error_body(401, "no", request_id="req_given")["request_id"] == "req_given"
    assert (
        anthropic_error_body(400, "a")["request_id"] != anthropic_error_body(400, "a")["request_id"]
    )


@pytest.mark.parametrize(
    ("path", "anthropic", "openai", "top"),
    [
        pytest.param("/v1/messages", True, False, "type", id="messages is Anthropic"),
        pytest.param("/v1/messages/count_tokens", False, True, "error", id="count_tokens is not"),
        pytest.param("/v1/chat/completions", False, True, "error", id="chat completions"),
        pytest.param("/v1", False, True, "error", id="bare v1"),
        pytest.param("/api/chat", False, False, "error", id="native"),
        pytest.param("/v1messages", False, False, "error", id="no slash is native"),
    ],
)
def test_path_shapes(path: str, anthropic: bool, openai: bool, top: str) -> None:
    assert is_anthropic_path(path) is anthropic
    assert is_openai_path(path) is openai
    body = error_body_for(path, 400, "bad")
    assert top in body
    if anthropic:
        assert body["error"]["type"] == "invalid_request_error"
    elif openai:
        assert body["error"] == {
            "message": "bad",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    else:
        assert body == {"error": "bad"}
