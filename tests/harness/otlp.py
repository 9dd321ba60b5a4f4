"""OTLP trace receivers on loopback, for tests that check the spans a process exports.

No collector binary is installed here, so the tests run their own: an OTLP/HTTP receiver
(``POST /v1/traces``, an ``ExportTraceServiceRequest`` in protobuf, the answer an empty
``ExportTraceServiceResponse``) as an aiohttp server, and an OTLP/gRPC receiver
(``opentelemetry.proto.collector.trace.v1.TraceService/Export``) as a grpc.aio server.
Both decode what arrives into :class:`ReceivedSpan` values in one :class:`SpanSink`,
which a test awaits (:meth:`SpanSink.wait_for`) instead of sleeping.

The exporter under test is the real one, configured only through ``OTEL_*`` variables
(:func:`otel_env` gives them for a receiver).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "ReceivedSpan",
    "SpanSink",
    "grpc_receiver",
    "http_receiver",
    "otel_env",
]

#: SpanKind as OTLP numbers it.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as a receiver decoded it (ids in lowercase hex, "" for no parent)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    status: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int

    def event(self, name: str) -> dict[str, Any] | None:
        """The attributes of the first event named ``name`` (None: no such event)."""
        for found, attrs in self.events:
            if found == name:
                return attrs
        return None


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, which) if which else None


def _attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=KINDS.get(s.kind, str(s.kind)),
                        attributes=_attributes(s.attributes),
                        events=tuple((e.name, _attributes(e.attributes)) for e in s.events),
                        status=s.status.code,
                        resource=resource,
                        scope=ss.scope.name,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


@dataclass
class SpanSink:
    """Every span the receivers got, in arrival order; awaitable."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        self.spans.extend(spans)
        self.requests += 1
        self.headers.append(headers)
        self._changed.set()

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_id == parent.span_id]

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """The spans, once ``found`` says they hold what the test waits for."""
        async with asyncio.timeout(timeout):
            while not found(self.spans):
                self._changed.clear()
                await self._changed.wait()
        return self.spans


@asynccontextmanager
async def http_receiver(sink: SpanSink) -> AsyncIterator[str]:
    """An OTLP/HTTP receiver on 127.0.0.1; yields its base URL (the exporter adds /v1/traces)."""

    async def traces(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="protobuf only")
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        sink.add(decode(message), {k.lower(): v for k, v in request.headers.items()})
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """Runs in the gRPC server's threads; hands what it decoded to the test's loop."""

    def __init__(self, sink: SpanSink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.loop = loop

    def Export(  # the service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        metadata = {str(k): str(v) for k, v in context.invocation_metadata()}
        self.loop.call_soon_threadsafe(self.sink.add, decode(request), metadata)
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def grpc_receiver(sink: SpanSink) -> AsyncIterator[str]:
    """An OTLP/gRPC receiver on 127.0.0.1 (plaintext); yields its ``http://`` endpoint.

    grpcio's own threads serve it (not grpc.aio), so it works under any event loop the
    test runs on (the balancer's tests run on uvloop)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    service = _TraceService(sink, asyncio.get_running_loop())
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(lambda: server.stop(grace=None).wait())


def otel_env(endpoint: str, protocol: str, **extra: str) -> dict[str, str]:
    """The OTEL_* variables that send a process's spans to a receiver at ``endpoint``.

    The batch processor's delay is cut to 50 ms so spans arrive while the test awaits them.
    """
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }
