"""A request's trace (issue 25): the balancer's spans received over real OTLP on loopback.

The balancer is configured the standard way (OTEL_* variables read by the SDK); its spans
reach an OTLP/HTTP or OTLP/gRPC receiver in the test.  Checked: one server span per
request continuing the caller's W3C traceparent (else a new trace), its HTTP and GenAI
attributes, the trace id in the request's record (the log line), probes not traced, and
the preemption hook the scheduler's resume path calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ollama_balancer.app import create_app, serve
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.observability import request_fields, request_sample
from ollama_balancer.settings import BalancerSettings
from ollama_balancer.traces import NO_TRACE, SpanTrace, start_trace
from ollama_emulator import EmulatedFleet, FleetConfig
from ollama_wire.tracing import Tracing, tracing_from_env
from tests.harness.fleet import Rig, RigFactory, nodes
from tests.harness.otlp import ReceivedSpan, SpanSink, grpc_receiver, http_receiver, otel_env

M = "llama3.2:3b"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}
#: A caller's span: trace 0af7..., span b7ad... (the W3C specification's example ids).
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"

Receiver = Callable[[SpanSink], Any]


@asynccontextmanager
async def traced(
    monkeypatch: pytest.MonkeyPatch, protocol: str = "http/protobuf", **extra: str
) -> AsyncIterator[tuple[SpanSink, Tracing]]:
    sink = SpanSink()
    receiver = http_receiver if protocol == "http/protobuf" else grpc_receiver
    async with receiver(sink) as endpoint:
        env = otel_env(endpoint, protocol, **extra)
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
    assert record.trace_id == CALLER_TRACE
    line = request_fields(record, request_sample(record, rig.bal.view.snapshot))
    assert line["trace_id"] == CALLER_TRACE  # the request log line: logs join traces


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


async def test_an_unsampled_request_records_nothing_and_says_so_downstream(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler leaves a request out: no span, but its trace id is logged and the pod is
    told "not sampled", so nothing below records a half trace."""
    async with traced(monkeypatch, OTEL_TRACES_SAMPLER="always_off") as (sink, tracing):
        rig = await rig_factory(nodes(("a", [M], [M])), tracer=tracing.tracer)
        records = recorded(rig)
        assert (await rig.post("/api/chat", CHAT)).status == 200
        trace = start_trace(tracing.tracer, {}, "POST", "/api/chat", "/api/chat")
        headers = {"TraceParent": TRACEPARENT}
        trace.propagate(headers)
        await asyncio.to_thread(tracing.flush)
    assert sink.spans == []
    (record,) = records
    assert len(record.trace_id) == 32
    assert list(headers) == ["traceparent"]  # the caller's, in any case, is replaced
    assert headers["traceparent"].startswith(f"00-{trace.trace_id}-")
    flags = int(headers["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 1 == 0  # W3C's "sampled" bit: off


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


async def test_the_tree_a_retry_and_a_cold_load(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm pod fails before its first byte: the request is retried on a pod that loads
    the model.  One trace: route, two attempts (the second says why), the cold load under
    the second, its first byte, usage on the server span."""
    async with traced(monkeypatch) as (sink, tracing):
        rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [])), tracer=tracing.tracer)
        rig.node("a").faults.fail_next(1, status=500, message="boom", paths=["/api/chat"])
        resp = await rig.post("/api/chat", CHAT)
        assert resp.status == 200
        assert resp.headers["X-Ollama-Backend"] == "b"
        spans = await flushed(tracing, sink, lambda s: bool(server_spans(s)))
    (server,) = server_spans(spans)
    tree = sink.trace(server.trace_id)
    children = [c for c in tree if c.parent_id == server.span_id]
    (route,) = [c for c in children if c.name == "ollama_fleet.route"]
    assert route.attributes["ollama_fleet.pod"] == "a"
    assert route.attributes["ollama_fleet.route.reason"] == "resident"
    assert route.attributes["ollama_fleet.route.candidates"] == ["a", "b"]
    attempts = sorted((c for c in children if c.kind == "client"), key=lambda c: c.start_ns)
    assert [a.name for a in attempts] == [f"chat {M}", f"chat {M}"]
    first, second = attempts
    assert first.attributes["ollama_fleet.pod"] == "a"
    assert first.attributes["http.response.status_code"] == 500
    assert first.status == 2  # ERROR
    assert second.attributes["ollama_fleet.pod"] == "b"
    assert second.attributes["ollama_fleet.attempt"] == 2
    assert "boom" in second.attributes["ollama_fleet.retry.reason"]
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["gen_ai.request.model"] == M
    assert second.event("first_byte") is not None
    (load,) = [c for c in tree if c.name == "ollama_fleet.cold_load"]
    assert load.parent_id == second.span_id
    assert load.attributes["ollama_fleet.cold_load.seconds"] > 0
    assert server.attributes["ollama_fleet.attempts"] == 2
    assert server.attributes["ollama_fleet.usage.counted"] == "reported"


async def test_the_wait_in_the_balancer(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late binding: a request that waited for the one slot has a wait span, then its route."""
    async with traced(monkeypatch) as (sink, tracing):
        rig = await rig_factory(
            nodes(("a", [M], [M]), num_parallel=1),
            tracer=tracing.tracer,
            queue=True,
            time_scale=1.0,  # the first answer takes a while: the second waits for its slot
        )
        slow = {**CHAT, "options": {"num_predict": 30}}
        first = asyncio.ensure_future(rig.post("/api/chat", slow))
        await rig.until(lambda: rig.bal.ledger.total_inflight() >= 1)
        second = await rig.post("/api/chat", CHAT)
        assert second.status == 200 and (await first).status == 200
        assert float(second.headers["X-Queue-Wait"]) > 0
        spans = await flushed(tracing, sink, lambda s: len(server_spans(s)) >= 2)
    waits = [s for s in spans if s.name == "ollama_fleet.wait"]
    assert len(waits) == 2  # both went through the wait room; one waited for the slot
    longest = max(waits, key=lambda w: w.attributes["ollama_fleet.wait.seconds"])
    assert longest.attributes["ollama_fleet.wait.seconds"] > 0
    assert longest.attributes["ollama_fleet.wait.outcome"] == "dispatched"
    assert longest.attributes["ollama_fleet.pod"] == "a"
    assert longest.attributes["ollama_fleet.tenant"]
    parent = next(s for s in server_spans(spans) if s.span_id == longest.parent_id)
    assert [c.name for c in sink.children(parent) if c.kind == "internal"] == [
        "ollama_fleet.wait",
        "ollama_fleet.route",
    ]


async def test_the_pod_receives_the_attempts_traceparent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the balancer and the pod, a recorder on loopback sees what is sent on: the
    attempt span's context, not the caller's; tracing off, the caller's passes untouched."""
    seen: list[dict[str, str]] = []
    async with (
        EmulatedFleet(FleetConfig(nodes=nodes(("a", [M], [M])), time_scale=0.01)) as fleet,
        aiohttp.ClientSession() as session,
        recorder(fleet.nodes[0].url, session, seen) as pod,
    ):
        for tracing_on in (True, False):
            async with traced(monkeypatch) as (sink, tracing):
                tracer = tracing.tracer if tracing_on else None
                settings = BalancerSettings.build(host="127.0.0.1", port=0, backends=(f"a={pod}",))
                app = create_app(settings, tracer=tracer)
                runner, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1.0)
                try:
                    url = f"http://127.0.0.1:{port}/api/chat"
                    async with session.post(
                        url, json=CHAT, headers={"traceparent": TRACEPARENT}
                    ) as resp:
                        assert resp.status == 200
                    if tracing_on:
                        spans = await flushed(
                            tracing, sink, lambda s: any(x.kind == "client" for x in s)
                        )
                finally:
                    await runner.cleanup()
            sent = seen[-1]
            if tracing_on:
                (attempt,) = [x for x in spans if x.kind == "client"]
                assert sent["traceparent"] == f"00-{CALLER_TRACE}-{attempt.span_id}-01"
            else:
                assert sent["traceparent"] == TRACEPARENT


@asynccontextmanager
async def recorder(
    target: str, session: aiohttp.ClientSession, seen: list[dict[str, str]]
) -> AsyncIterator[str]:
    """A loopback pass-through in front of an emulated pod, keeping each request's headers."""

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            seen.append({k.lower(): v for k, v in request.headers.items()})
        async with session.request(
            request.method,
            target + request.path_qs,
            data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as upstream:
            body = await upstream.read()
            return web.Response(
                status=upstream.status,
                body=body,
                content_type=upstream.content_type,
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
