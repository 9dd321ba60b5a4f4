"""A request's trace: the spans of its way through the balancer (OpenTelemetry).

One server span per request, continuing the caller's W3C ``traceparent``/``tracestate``
(else the root of a new trace), with a child for each thing that took its time::

    POST /api/chat                         server   http.*, gen_ai.* request and usage
    ├── ollama_fleet.wait                  internal waited in the balancer for a slot
    ├── ollama_fleet.route                 internal model, pod, reason, candidates considered
    ├── chat llama3.2:1b                   client   attempt 1 to a pod (traceparent sent on)
    │   ├── ollama_fleet.cold_load         internal the load it waited for
    │   └── event: first_byte
    ├── chat llama3.2:1b                   client   attempt 2 (ollama_fleet.retry.reason)
    └── ollama_fleet.preemption            internal taken back on one pod, resumed on another

Attributes follow the OpenTelemetry semantic conventions: HTTP's for the server span
and the attempts (``http.request.method``, ``http.route``, ``http.response.status_code``,
``server.address``, ``error.type``), GenAI's for what the model did
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``); the balancer's own
are ``ollama_fleet.*``.  Prompt and response text are never recorded.

Tracing off, every request shares :data:`NO_TRACE`, whose methods do nothing: the
request path pays one attribute lookup and an empty call per point, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .core.rankers import Choice
from .core.record import RequestRecord
from .core.usage import Counted, operation_of

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "NO_TRACE",
    "PROPAGATION_HEADERS",
    "RequestTrace",
    "SpanTrace",
    "UnsampledTrace",
    "start_trace",
]

#: What carries a trace between processes (W3C Trace Context); the client's are replaced
#: by the attempt's own when the balancer traces, passed on untouched when it does not.
PROPAGATION_HEADERS = frozenset({"traceparent", "tracestate"})

PROVIDER = "ollama"  # gen_ai.provider.name: every pod speaks Ollama's API


class RequestTrace:
    """The points of a request's way that a trace records; this base records nothing.

    The proxy calls these in order; each is safe to call in any state (an attempt that
    never started cannot fail, a wait never begun cannot end).  The scheduler's resume
    path calls :meth:`preempted` when it takes a generation back from a pod and
    :meth:`resumed` when the generation goes on elsewhere.
    """

    __slots__ = ()

    @property
    def trace_id(self) -> str:
        """The trace's id, 32 hex digits ("" without a trace)."""
        return ""

    def model(self, name: str) -> None:
        """The model the request names, once the pipeline has read its body."""

    def waiting(self, tenant: str, priority: str) -> None:
        """The request starts waiting in the balancer for a slot."""

    def waited(self, backend: str, seconds: float, outcome: str = "dispatched") -> None:
        """The wait ended: bound to ``backend`` (or shed, expired, cancelled)."""

    def routed(self, model: str, ranked: Sequence[Choice]) -> None:
        """The routing decision: the ranked pods, the first chosen (with its reason)."""

    def attempt(self, n: int, backend: str, url: str, path: str, retry_reason: str = "") -> None:
        """Attempt ``n`` (from 1) is sent to ``backend`` at ``url``; a retry says why."""

    def propagate(self, headers: MutableMapping[str, str]) -> None:
        """Put the current attempt's trace context into the headers sent to the pod."""

    def first_byte(self, seconds: float, cold_load_seconds: float | None = None) -> None:
        """The pod's first byte, after ``seconds``; a cold load it waited for, if any."""

    def attempt_failed(self, why: str, status: int | None = None) -> None:
        """The current attempt failed before its first byte reached the client."""

    def attempt_ended(self, status: int) -> None:
        """The current attempt's answer was relayed (to its end, a break or the client leaving)."""

    def preempted(self, backend: str, reason: str = "") -> None:
        """The scheduler took the generation back from ``backend`` (a span starts)."""

    def resumed(self, backend: str, generated: int | None = None) -> None:
        """The generation goes on at ``backend`` (the preemption span ends)."""

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Any other moment worth a mark on the request's span."""

    def finish(self, record: RequestRecord) -> None:
        """The answer is complete: the server span takes the record's figures and ends."""


NO_TRACE = RequestTrace()


class SpanTrace(RequestTrace):
    """A request's spans in the OpenTelemetry SDK (one instance per traced request)."""

    __slots__ = (
        "_attempt",
        "_attempt_ctx",
        "_ctx",
        "_model",
        "_operation",
        "_preemption",
        "_server",
        "_tracer",
        "_wait",
    )

    def __init__(self, tracer: Tracer, server: Span, operation: str) -> None:
        self._tracer = tracer
        self._server = server
        self._operation = operation
        self._model = ""
        self._ctx: Context = trace.set_span_in_context(server)
        self._wait: Span | None = None
        self._attempt: Span | None = None
        self._attempt_ctx: Context | None = None
        self._preemption: Span | None = None

    @property
    def trace_id(self) -> str:
        context = self._server.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    def _child(
        self,
        name: str,
        attributes: Mapping[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        context: Context | None = None,
        start_time: int | None = None,
    ) -> Span:
        return self._tracer.start_span(
            name,
            context=context or self._ctx,
            kind=kind,
            attributes=dict(attributes),
            start_time=start_time,
        )

    def model(self, name: str) -> None:
        self._model = name[:200]
        self._server.set_attribute("gen_ai.request.model", self._model)

    def waiting(self, tenant: str, priority: str) -> None:
        self._wait = self._child(
            "ollama_fleet.wait",
            {"ollama_fleet.tenant": tenant, "ollama_fleet.priority": priority},
        )

    def waited(self, backend: str, seconds: float, outcome: str = "dispatched") -> None:
        span, self._wait = self._wait, None
        if span is None:
            return
        span.set_attribute("ollama_fleet.wait.outcome", outcome)
        span.set_attribute("ollama_fleet.wait.seconds", seconds)
        if backend:
            span.set_attribute("ollama_fleet.pod", backend)
        span.end()

    def routed(self, model: str, ranked: Sequence[Choice]) -> None:
        if not ranked:
            return
        self._child(
            "ollama_fleet.route",
            {
                "gen_ai.request.model": model,
                "ollama_fleet.pod": ranked[0].backend,
                "ollama_fleet.route.reason": str(ranked[0].reason),
                "ollama_fleet.route.candidates": [c.backend for c in ranked],
            },
        ).end()

    def attempt(self, n: int, backend: str, url: str, path: str, retry_reason: str = "") -> None:
        if self._attempt is not None:
            self.attempt_failed("superseded")
        operation, model = self._operation, self._model
        host, _, port = url.partition("://")[2].partition("/")[0].rpartition(":")
        attrs: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": url + path,
            "server.address": host,
            "ollama_fleet.pod": backend,
            "ollama_fleet.attempt": n,
            "gen_ai.provider.name": PROVIDER,
        }
        if port.isdigit():
            attrs["server.port"] = int(port)
        if operation:
            attrs["gen_ai.operation.name"] = operation
        if model:
            attrs["gen_ai.request.model"] = model
        if retry_reason:
            attrs["ollama_fleet.retry.reason"] = retry_reason
        name = f"{operation} {model}".strip() if operation else f"POST {path}"
        self._attempt = self._child(name, attrs, kind=SpanKind.CLIENT)
        self._attempt_ctx = trace.set_span_in_context(self._attempt)

    def propagate(self, headers: MutableMapping[str, str]) -> None:
        for name in [k for k in headers if k.lower() in PROPAGATION_HEADERS]:
            del headers[name]
        propagate.inject(headers, context=self._attempt_ctx or self._ctx)

    def first_byte(self, seconds: float, cold_load_seconds: float | None = None) -> None:
        span = self._attempt or self._server
        span.add_event("first_byte", {"ollama_fleet.ttfb": seconds})
        if cold_load_seconds is not None and self._attempt is not None:
            now = time.time_ns()
            start = now - int(cold_load_seconds * 1e9)
            load = self._child(
                "ollama_fleet.cold_load",
                {"ollama_fleet.cold_load.seconds": cold_load_seconds},
                context=self._attempt_ctx,
                start_time=start,
            )
            load.end(end_time=now)

    def attempt_failed(self, why: str, status: int | None = None) -> None:
        span, self._attempt, self._attempt_ctx = self._attempt, None, None
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("error.type", str(status) if status else "unreachable")
        span.set_status(Status(StatusCode.ERROR, why[:500]))
        span.end()

    def attempt_ended(self, status: int) -> None:
        span, self._attempt, self._attempt_ctx = self._attempt, None, None
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        span.end()

    def preempted(self, backend: str, reason: str = "") -> None:
        if self._preemption is not None:
            return
        attrs = {"ollama_fleet.preempted.pod": backend}
        if reason:
            attrs["ollama_fleet.preempted.reason"] = reason
        self._preemption = self._child("ollama_fleet.preemption", attrs)

    def resumed(self, backend: str, generated: int | None = None) -> None:
        span, self._preemption = self._preemption, None
        if span is None:
            return
        span.set_attribute("ollama_fleet.resumed.pod", backend)
        if generated is not None:
            span.set_attribute("ollama_fleet.resumed.generated_tokens", generated)
        span.end()

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self._server.add_event(name, dict(attributes or {}))

    def finish(self, record: RequestRecord) -> None:
        # A wait still open ended without a slot: shed (429) or its client left.
        self.waited("", record.queue_wait or 0.0, "shed" if record.status == 429 else "cancelled")
        self.resumed("")
        if self._attempt is not None:
            if record.client_gone:
                self._attempt.add_event("client_gone")
            self.attempt_ended(record.status)
        span = self._server
        attrs: dict[str, Any] = {
            "http.response.status_code": record.status,
            "ollama_fleet.request_id": record.request_id,
            "ollama_fleet.attempts": record.attempts,
        }
        if record.backend:
            attrs["ollama_fleet.pod"] = record.backend
            attrs["ollama_fleet.route.reason"] = str(record.reason)
        if record.client:
            attrs["ollama_fleet.client"] = record.client
        if record.tenant:
            attrs["ollama_fleet.tenant"] = record.tenant
        if record.queue_wait is not None:
            attrs["ollama_fleet.queue_wait"] = record.queue_wait
        usage = record.usage
        if usage.counted is not Counted.NONE:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt
            attrs["gen_ai.usage.output_tokens"] = usage.generated
            attrs["ollama_fleet.usage.counted"] = str(usage.counted)
        if usage.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [usage.finish_reason]
        if record.broken_stream:
            attrs["ollama_fleet.broken_stream"] = True
        if record.client_gone:
            attrs["ollama_fleet.client_gone"] = True
        span.set_attributes(attrs)
        if record.status >= 500:
            span.set_attribute("error.type", str(record.status))
            span.set_status(Status(StatusCode.ERROR, record.error[:500]))
        elif record.broken_stream:
            span.set_attribute("error.type", "broken_stream")
            span.set_status(Status(StatusCode.ERROR, record.error[:500]))
        span.end()


class UnsampledTrace(RequestTrace):
    """A request the sampler left out: no span is recorded, but its trace id is logged and
    its context (with the "not sampled" flag) goes on to the pod, so the decision holds
    downstream.  Children of an unsampled span would be unsampled too: none is started."""

    __slots__ = ("_ctx", "_trace_id")

    def __init__(self, server: Span) -> None:
        self._ctx: Context = trace.set_span_in_context(server)
        context = server.get_span_context()
        self._trace_id = format(context.trace_id, "032x") if context.is_valid else ""

    @property
    def trace_id(self) -> str:
        return self._trace_id

    def propagate(self, headers: MutableMapping[str, str]) -> None:
        for name in [k for k in headers if k.lower() in PROPAGATION_HEADERS]:
            del headers[name]
        propagate.inject(headers, context=self._ctx)


def start_trace(
    tracer: Tracer,
    headers: Mapping[str, str],
    method: str,
    path: str,
    route: str,
    *,
    client_address: str | None = None,
    user_agent: str | None = None,
) -> RequestTrace:
    """The server span of a request, child of the caller's trace context if it sent one."""
    parent = propagate.extract(headers)
    operation = operation_of(path)
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
    }
    if route:
        attrs["http.route"] = route
    if operation:
        attrs["gen_ai.operation.name"] = operation
        attrs["gen_ai.provider.name"] = PROVIDER
    if client_address:
        attrs["client.address"] = client_address
    if user_agent:
        attrs["user_agent.original"] = user_agent[:256]
    name = f"{method} {route}" if route else method
    server = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)
    if not server.is_recording():
        return UnsampledTrace(server)
    return SpanTrace(tracer, server, operation)
