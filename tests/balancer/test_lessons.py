"""What a complete answer taught: the final metrics line, load and service times, and the
tenant's token correction."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from ollama_balancer.core.rankers import Choice, Reason
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.core.requests import parse_request
from ollama_balancer.core.shared.model import Learned
from ollama_balancer.core.tokens import estimate_tokens
from ollama_balancer.core.usage import Counted, Usage
from ollama_balancer.proxying.attempt import Attempt
from ollama_balancer.proxying.claims import Claim
from ollama_balancer.proxying.lessons import Lessons, final_metrics
from ollama_balancer.proxying.relay import Relay
from ollama_wire.backend import Backend

FINAL = b'{"done":true,"done_reason":"stop","total_duration":3000000000,"load_duration":2000000000,"prompt_eval_count":12,"eval_count":30,"message":{"content":""}}'  # noqa: E501


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param(
            b'{"done":false}\n' + FINAL + b"\n",
            {
                "done_reason": "stop",
                "total_duration": 3000000000,
                "load_duration": 2000000000,
                "prompt_eval_count": 12,
                "eval_count": 30,
            },
            id="the last line, trailing newline",
        ),
        pytest.param(FINAL, {"prompt_eval_count": 12}, id="no newline at the end"),
        pytest.param(b'{"done":false}\n', None, id="not done"),
        pytest.param(b'data: {"done": tru', None, id="cut off"),
        pytest.param(b"[1, 2]\n", None, id="not an object"),
        pytest.param(b'{"done":true}', {}, id="done without metrics"),
    ],
)
def test_final_metrics(tail: bytes, expected: dict[str, Any] | None) -> None:
    got = final_metrics(tail)
    if expected is None or not expected:
        assert got == expected
    else:
        assert got is not None and expected.items() <= got.items()


def attempt(reason: Reason, record: RequestRecord) -> Attempt:
    body = b'{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}]}'
    req = parse_request(body, "/api/chat", None)
    return Attempt(
        make_mocked_request("POST", "/api/chat"),
        req,
        record,
        Claim(req.key),
        Choice("a", reason),
        Backend("a", "http://127.0.0.1:1"),
    )


def relayed(tail: bytes, content_type: str = "application/x-ndjson") -> Relay:
    relay = Relay()
    relay.last, relay.content_type = tail, content_type
    return relay


@pytest.mark.parametrize(
    ("reason", "tail", "content_type", "cold", "expected"),
    [
        pytest.param(
            Reason.RESIDENT, FINAL, "application/x-ndjson", None,
            Learned(load_seconds=2.0, service_seconds=1.0),
            id="final metrics: load and service times",
        ),
        pytest.param(
            Reason.RESIDENT, FINAL.replace(b"2000000000", b"1000"), "application/json", None,
            Learned(load_seconds=None, service_seconds=(3e9 - 1000) / 1e9),
            id="a load too short to be one is no load",
        ),
        pytest.param(
            Reason.COLD_LOAD, b"data: [DONE]\n\n", "text/event-stream", 4.0,
            Learned(load_seconds=0.5),
            id="no metrics, a cold load: the time to the first byte",
        ),
        pytest.param(
            Reason.RESIDENT, b"data: [DONE]\n\n", "text/event-stream", None,
            Learned(service_seconds=7.0),
            id="no metrics, warm, one body: since it was sent",
        ),
        pytest.param(
            Reason.LOADING, b"data: [DONE]\n\n", "text/event-stream", None, None,
            id="no metrics, not timed, waited for a load: nothing",
        ),
        pytest.param(
            Reason.COLD_LOAD, b"data: [DONE]\n\n", "text/event-stream", None, None,
            id="no metrics, a cold load not seen: nothing",
        ),
    ],
)  # fmt: skip
def test_what_an_answer_taught(
    reason: Reason, tail: bytes, content_type: str, cold: float | None, expected: Learned | None
) -> None:
    record = RequestRecord("r", "POST", "/api/chat", started=3.0, ttfb=0.5, cold_load_seconds=cold)
    lessons = Lessons(clock=lambda: 10.0)
    assert lessons.learn(attempt(reason, record), relayed(tail, content_type)) == expected
    if content_type != "text/event-stream":
        assert record.metrics["eval_count"] == 30


@pytest.mark.parametrize(
    ("reason", "cold", "queue_wait", "since", "expected"),
    [
        pytest.param(Reason.RESIDENT, None, 4.0, None, 3.0, id="one go: without the wait room"),
        pytest.param(Reason.RESIDENT, None, 4.0, 8.0, 2.0 + 12 / 2000, id="stream: its events"),
        pytest.param(Reason.LOADING, None, 0.0, 8.0, 2.0 + 12 / 2000, id="stream after a load"),
        pytest.param(Reason.LOADING, None, 0.0, None, None, id="one go after a load: nothing"),
    ],
)  # fmt: skip
def test_the_service_time_is_the_slots_not_the_requests(
    reason: Reason,
    cold: float | None,
    queue_wait: float,
    since: float | None,
    expected: float,
) -> None:
    """A request that waited (in the wait room, for a load) teaches only its hold on the slot:
    from its first streamed event (plus the prompt's time at the default rate, at most the
    first byte's), else since it was sent."""
    record = RequestRecord("r", "POST", "/v1/chat/completions", started=3.0, ttfb=5.0)
    record.queue_wait, record.cold_load_seconds = queue_wait, cold
    record.usage = Usage(12, 40, Counted.CHUNKS)
    lessons = Lessons(clock=lambda: 10.0)
    got = lessons.learn(
        attempt(reason, record), relayed(b"data: [DONE]\n\n", "text/event-stream"), since
    )
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.service_seconds == pytest.approx(expected)
        assert got.load_seconds is None


@pytest.mark.parametrize(
    ("prompt", "ttfb", "expected"),
    [
        pytest.param(400, 5.0, 2.0 + 400 / 2000, id="the guess, the first byte took longer"),
        pytest.param(400, 0.01, 2.0 + 0.01, id="at most the first byte's time (a fast pod)"),
    ],
)  # fmt: skip
def test_the_prompts_time_is_at_most_the_first_bytes(
    prompt: int, ttfb: float, expected: float
) -> None:
    """The default prefill rate can be many times a fast pod's: a service time inflated by
    it makes a warm pod's wait look like a load (bench autoscale's smoke cold-loaded a
    pinned model's second copy that way)."""
    record = RequestRecord("r", "POST", "/v1/chat/completions", started=3.0, ttfb=ttfb)
    record.usage = Usage(prompt, 40, Counted.CHUNKS)
    got = Lessons(clock=lambda: 10.0).learn(
        attempt(Reason.RESIDENT, record), relayed(b"data: [DONE]\n\n", "text/event-stream"), 8.0
    )
    assert got is not None and got.service_seconds == pytest.approx(expected)


def test_a_streamed_cold_load_teaches_the_load_and_the_service() -> None:
    record = RequestRecord("r", "POST", "/v1/chat/completions", started=3.0, ttfb=4.5)
    record.cold_load_seconds = 4.0
    record.usage = Usage(12, 40, Counted.CHUNKS)
    lessons = Lessons(clock=lambda: 10.0)
    got = lessons.learn(
        attempt(Reason.COLD_LOAD, record),
        relayed(b"data: [DONE]\n\n", "text/event-stream"),
        streamed_since=8.0,
    )
    assert got is not None and got.load_seconds == 4.5
    assert got.service_seconds == pytest.approx(2.0 + 12 / 2000)


def test_the_tenants_token_estimate_is_corrected_by_the_metrics() -> None:
    record = RequestRecord("r", "POST", "/api/chat", tenant="team-a")
    at = attempt(Reason.RESIDENT, record)
    raw = estimate_tokens(at.req.doc, "/api/chat", 256)
    record.token_estimate = raw
    lessons = Lessons(clock=lambda: 1.0)
    before = lessons.tokens.correct("team-a", at.req.key, raw)
    lessons.learn(at, relayed(FINAL))
    after = lessons.tokens.correct("team-a", at.req.key, raw)
    assert after.total < before.total  # 256 output tokens assumed, 30 generated
    assert lessons.tokens.correct("team-b", at.req.key, raw) == before  # per tenant


@pytest.mark.parametrize(
    ("content_type", "generated", "since", "expected"),
    [
        pytest.param("text/event-stream", 40, 8.0, 2.0 / 40, id="40 tokens streamed in 2 s"),
        pytest.param("text/event-stream", 40, None, None, id="not relayed in one go: no timing"),
        pytest.param("text/event-stream", 5, 8.0, None, id="too few tokens to time"),
        pytest.param("application/json", 40, 8.0, None, id="one body, not a stream"),
    ],
)
def test_a_stream_without_metrics_teaches_the_seconds_per_token(
    content_type: str, generated: int, since: float | None, expected: float | None
) -> None:
    """OpenAI and Anthropic streams carry no durations: the relay times the tokens."""
    record = RequestRecord("r", "POST", "/v1/chat/completions", started=3.0, ttfb=0.5)
    record.usage = Usage(12, generated, Counted.CHUNKS)
    at = attempt(Reason.RESIDENT, record)
    lessons = Lessons(clock=lambda: 10.0)
    default = lessons.rates.decode_seconds(at.req.key)
    lessons.learn(at, relayed(b"data: [DONE]\n\n", content_type), streamed_since=since)
    got = lessons.rates.decode_seconds(at.req.key)
    assert got == pytest.approx(default if expected is None else expected)
