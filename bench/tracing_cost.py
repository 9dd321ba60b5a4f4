"""What tracing costs one request, in process CPU time, without the noise of a shared machine
(``python -m bench.tracing_cost``; issue #25).

``bench proxy --tracing`` measures the traced balancer end to end, but on a machine shared
with other work its CPU per request moves by ±50 % between runs.  This measures the part
tracing adds, alone and repeatedly: the calls the pipeline and the proxy make on a request's
trace (server span, route, one attempt, its traceparent, first byte, the end), with

* ``off``: tracing off — the same calls on :data:`~ollama_balancer.traces.NO_TRACE`;
* ``unsampled``: tracing on, the request left out by the sampler;
* ``sampled, no export``: every span made and ended, handed to an exporter that drops them;
* ``sampled, OTLP encoding``: the same, the spans encoded as the OTLP exporter does before
  sending, in batches of 512 (the protobuf ``ExportTraceServiceRequest``; the HTTP post of
  a batch itself is left out);
* ``10 %``: ``parentbased_traceidratio`` 0.1 with the encoding.

CPU time of this process (``time.process_time``) per request; the median of ``rounds``
rounds, interleaved, so a busy neighbour slows every variant alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased as Ratio

from ollama_balancer.core.rankers import Choice, Reason
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.core.usage import Counted, Usage
from ollama_balancer.traces import NO_TRACE, RequestTrace, start_trace


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Encode(SpanExporter):
    """Encodes spans as the OTLP exporter does, in batches of the batch processor's size
    (512: ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``), on this thread so its CPU is counted."""

    def __init__(self) -> None:
        self._batch: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._batch.extend(spans)
        if len(self._batch) >= 512:
            encode_spans(self._batch).SerializeToString()
            self._batch.clear()
        return SpanExportResult.SUCCESS


RANKED = (Choice("node-0", Reason.RESIDENT), Choice("node-1", Reason.RESIDENT))
HEADERS = {"user-agent": "wrk", "content-type": "application/json"}
RECORD = RequestRecord(
    "r", "POST", "/api/chat", status=200, backend="node-0", reason="resident", attempts=1
)
RECORD.usage = Usage(12, 40, Counted.REPORTED, "stop")


def _one(trace: RequestTrace) -> None:
    """The calls one early-bound request makes on its trace."""
    trace.model("zero")
    trace.routed("zero", RANKED)
    trace.attempt(1, "node-0", "http://127.0.0.1:11434", "/api/chat")
    headers = {"Content-Type": "application/json"}
    trace.propagate(headers)
    trace.first_byte(0.001, None)
    trace.attempt_ended(200)
    trace.finish(RECORD)


def variant(sampler: Sampler | None, exporter: SpanExporter | None) -> Callable[[], None]:
    if sampler is None:
        return lambda: _one(NO_TRACE)
    provider = TracerProvider(sampler=sampler)
    assert exporter is not None
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")

    def request() -> None:
        _one(
            start_trace(
                tracer,
                HEADERS,
                "POST",
                "/api/chat",
                "/api/chat",
                client_address="127.0.0.1",
                user_agent="wrk",
            )
        )

    return request


VARIANTS: dict[str, Callable[[], Callable[[], None]]] = {
    "off": lambda: variant(None, None),
    "unsampled": lambda: variant(ParentBased(ALWAYS_OFF), _Drop()),
    "10 %": lambda: variant(ParentBased(Ratio(0.1)), _Encode()),
    "sampled, no export": lambda: variant(ParentBased(ALWAYS_ON), _Drop()),
    "sampled, OTLP encoding": lambda: variant(ParentBased(ALWAYS_ON), _Encode()),
}


def measure(requests: int = 2000, rounds: int = 5) -> dict[str, float]:
    made = {name: make() for name, make in VARIANTS.items()}
    per: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(rounds):
        for name, request in made.items():
            t = time.process_time()
            for _ in range(requests):
                request()
            per[name].append((time.process_time() - t) / requests * 1e6)
    return {name: statistics.median(v) for name, v in per.items()}


def main(argv: Sequence[str]) -> int:
    requests = int(argv[0]) if argv else 2000
    result = measure(requests)
    print("| tracing | CPU µs per request (median of 5 rounds) |\n|---|---|")
    for name, us in result.items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
