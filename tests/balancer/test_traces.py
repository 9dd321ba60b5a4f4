"""A request's trace (issue 25): the balancer's spans received over real OTLP on loopback.

The balancer is configured the standard way (OTEL_* variables read by the SDK); its spans
reach an OTLP/HTTP or OTLP/gRPC receiver in the test.  Checked: one server span per
request continuing the caller's W3C traceparent (else a new trace), its HTTP and GenAI
attributes, the trace id in the request's record (the log line), probes not traced, and
the preemption hook the scheduler's resume path calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ollama_balancer.core.record import RequestRecord
from ollama_balancer.traces import NO_TRACE, SpanTrace, start_trace
from ollama_wire.tracing import Tracing, tracing_from_env
from tests.balancer.conftest import Rig, RigFactory, nodes
from tests.otlp import ReceivedSpan, SpanSink, grpc_receiver, http_receiver, otel_env

M = "llama3.2:3b"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}
#: A caller's span: trace 0af7..., span b7ad... (the W3C specification's example ids).
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"

Receiver = Callable[[SpanSink], Any]


@asynccontextmanager
async def traced(
    monkeypatch: pytest.MonkeyPatch, protocol: str = "http/protobuf"
) -> AsyncIterator[tuple[SpanSink, Tracing]]:
    sink = SpanSink()
    receiver = http_receiver if protocol == "http/protobuf" else grpc_receiver
    async with receiver(sink) as endpoint:
        env = otel_env(endpoint, protocol)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        tracing = tracing_from_env(env, service_name="ollama-fleet-balancer", scope="test")
        assert tracing is not None
        try:
            yield sink, tracing
        finally:
            await asyncio.to_thread(tracing.shutdown)


async def flushed(
    tracing: Tracing, sink: SpanSink, found: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    await asyncio.to_thread(tracing.flush)
    return await sink.wait_for(found)


def recorded(rig: Rig) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    rig.bal.records.append(records.append)
    return records


def server_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == "server"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_a_request_continues_the_callers_trace(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    async with traced(monkeypatch, protocol) as (sink, tracing):
        rig = await rig_factory(nodes(("a", [M], [M])), tracer=tracing.tracer)
        records = recorded(rig)
        resp = await rig.post(
            "/api/chat", CHAT, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=x"}
        )
        assert resp.status == 200
        answer = await resp.json()
        spans = await flushed(tracing, sink, lambda s: bool(server_spans(s)))
    (server,) = server_spans(spans)
    assert server.name == "POST /api/chat"
    assert (server.trace_id, server.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    a = server.attributes
    assert a["http.request.method"] == "POST"
    assert a["http.route"] == "/api/chat"
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == M
    assert a["ollama_fleet.pod"] == "a"
    assert a["ollama_fleet.request_id"] == resp.headers["X-Request-ID"]
    assert a["gen_ai.usage.input_tokens"] == answer["prompt_eval_count"]
    assert a["gen_ai.usage.output_tokens"] == answer["eval_count"]
    assert a["gen_ai.response.finish_reasons"] == [answer["done_reason"]]
    assert server.resource["service.name"] == "ollama-fleet-balancer"
    (record,) = [r for r in records if r.path == "/api/chat"]
    assert record.trace_id == CALLER_TRACE  # the log line's trace_id: logs join traces


async def test_without_traceparent_a_new_trace(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with traced(monkeypatch) as (sink, tracing):
        rig = await rig_factory(nodes(("a", [M], [M])), tracer=tracing.tracer)
        records = recorded(rig)
        for path in ("/healthz", "/api/tags", "/metrics"):  # probes and listings: no trace
            assert (await rig.session.get(rig.url + path)).status == 200
        assert (await rig.post("/api/chat", CHAT)).status == 200
        spans = await flushed(tracing, sink, lambda s: bool(server_spans(s)))
    (server,) = server_spans(spans)
    assert server.parent_id == ""
    (record,) = [r for r in records if r.path == "/api/chat"]
    assert record.trace_id == server.trace_id
    assert all(r.trace_id == "" for r in records if r.path != "/api/chat")


async def test_tracing_off_traces_nothing(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    records = recorded(rig)
    resp = await rig.post("/api/chat", CHAT, headers={"traceparent": TRACEPARENT})
    assert resp.status == 200
    (record,) = records
    assert record.trace_id == ""
    assert rig.bal.tracer is None


async def test_the_preemption_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the scheduler's resume path calls: a span from the take-back to the resume,
    naming both pods, under the request's server span."""
    async with traced(monkeypatch) as (sink, tracing):
        trace = start_trace(tracing.tracer, {}, "POST", "/api/chat", "/api/chat")
        assert isinstance(trace, SpanTrace)
        trace.model(M)
        trace.preempted("gpu-1", "a critical request needs the slot")
        trace.resumed("gpu-2", generated=17)
        trace.event("resume_stitched", {"ollama_fleet.chunks": 3})
        record = RequestRecord("r1", "POST", "/api/chat", status=200)
        trace.finish(record)
        spans = await flushed(tracing, sink, lambda s: len(s) >= 2)
    (server,) = server_spans(spans)
    (gap,) = [s for s in spans if s.name == "ollama_fleet.preemption"]
    assert gap.parent_id == server.span_id
    assert gap.attributes == {
        "ollama_fleet.preempted.pod": "gpu-1",
        "ollama_fleet.preempted.reason": "a critical request needs the slot",
        "ollama_fleet.resumed.pod": "gpu-2",
        "ollama_fleet.resumed.generated_tokens": 17,
    }
    assert server.event("resume_stitched") == {"ollama_fleet.chunks": 3}


def test_no_trace_does_nothing() -> None:
    headers: dict[str, str] = {"traceparent": TRACEPARENT}
    NO_TRACE.propagate(headers)  # tracing off: the caller's context goes on untouched
    NO_TRACE.preempted("a")
    NO_TRACE.resumed("b")
    NO_TRACE.finish(RequestRecord("r", "POST", "/api/chat"))
    assert headers == {"traceparent": TRACEPARENT}
    assert NO_TRACE.trace_id == ""


Waiter = Callable[[], Awaitable[None]]
