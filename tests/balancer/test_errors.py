"""The error tree: routing outcomes → statuses, failed attempts → one answer, one renderer."""

from __future__ import annotations

import json

import pytest

from ollama_balancer.core.errors import (
    AttemptFailed,
    BackendAnswer,
    BalancerError,
    GatewayTimeout,
    HoldersDown,
    NoBackend,
    NoSuchModel,
    NotFound,
    PayloadTooLarge,
    PinDown,
    PinUnknown,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unroutable,
    for_outcome,
    give_up,
)
from ollama_balancer.pipeline import error_response


@pytest.mark.parametrize(
    ("outcome", "kind", "status", "message", "retry_after"),
    [
        pytest.param(NoSuchModel("x"), NotFound, 404, "model 'x' not found", None, id="no model"),
        pytest.param(
            HoldersDown("x", ("b", "a")),
            Unavailable,
            503,
            "model 'x' is unavailable: every pod holding it is down (a, b)",
            5,
            id="holders down",
        ),
        pytest.param(NoBackend(), Unavailable, 503, "no Ollama backend", 5, id="no backend"),
        pytest.param(
            PinUnknown("zz", ("a", "b")),
            NotFound,
            404,
            "backend 'zz' is not in the fleet (known: a, b)",
            None,
            id="pin unknown",
        ),
        pytest.param(
            PinDown("a"), Unavailable, 503, "backend 'a' is not available", 5, id="pin down"
        ),
    ],
)
def test_routing_outcomes_map_to_statuses(
    outcome: Unroutable,
    kind: type[BalancerError],
    status: int,
    message: str,
    retry_after: int | None,
) -> None:
    err = for_outcome(outcome)
    assert type(err) is kind and err.status == status
    assert message in err.message
    assert err.retry_after == retry_after


@pytest.mark.parametrize(
    ("failures", "kind", "status", "needle"),
    [
        pytest.param([], Unavailable, 503, "no Ollama backend", id="nothing tried"),
        pytest.param(
            [AttemptFailed("a", "unreachable: refused", fast=True)],
            Unavailable,
            503,
            "all backends failed for model 'm': a: unreachable: refused",
            id="unreachable",
        ),
        pytest.param(
            [AttemptFailed("a", "answered 500: load failed", status=500, answer="load failed")],
            BackendAnswer,
            500,
            "load failed",
            id="the backend's own answer passes",
        ),
        pytest.param(
            [AttemptFailed("a", "answered 503: busy", status=503, answer="busy")],
            Unavailable,
            503,
            "a: answered 503: busy",
            id="busy everywhere is ours",
        ),
        pytest.param(
            [
                AttemptFailed("a", "unreachable: reset", fast=True),
                AttemptFailed("b", "sent nothing for 3s", retry=False, timeout=True),
            ],
            GatewayTimeout,
            504,
            "a: unreachable: reset; b: sent nothing for 3s",
            id="last attempt timed out",
        ),
    ],
)
def test_give_up(
    failures: list[AttemptFailed], kind: type[BalancerError], status: int, needle: str
) -> None:
    err = give_up("m", failures)
    assert type(err) is kind and err.status == status
    assert needle in err.message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"error": "slow down"}, id="ollama shape"),
        pytest.param(
            "/v1/chat/completions",
            {"error": {"message": "slow down", "type": "api_error", "param": None, "code": None}},
            id="openai shape",
        ),
    ],
)
def test_one_renderer_in_the_clients_shape(path: str, body: dict[str, object]) -> None:
    resp = error_response(path, TooManyRequests("slow down", retry_after=7))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.body is not None and json.loads(bytes(resp.body)) == body  # type: ignore[arg-type]


def test_statuses_and_headers_are_chosen_by_the_error() -> None:
    assert Unauthorized("missing API key").headers == {"WWW-Authenticate": "Bearer"}
    too_big = PayloadTooLarge(10)
    assert too_big.status == 413 and too_big.close and "10 bytes" in too_big.message
    resp = error_response("/api/chat", too_big)
    assert resp.status == 413 and not resp.keep_alive
