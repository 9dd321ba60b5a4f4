"""OpenTelemetry traces for a fleet process: started when an OTLP endpoint is set, else nothing.

Configuration is the standard one, read by the OpenTelemetry SDK itself (never by a
parser of ours):

========================================  =================================================
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``    where spans go (or ``OTEL_EXPORTER_OTLP_ENDPOINT``);
                                          neither set: tracing is off
``OTEL_EXPORTER_OTLP_PROTOCOL``           ``http/protobuf`` (the default) or ``grpc``
                                          (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` first)
``OTEL_EXPORTER_OTLP_HEADERS``            e.g. a collector's API key (and ``_TRACES_``, TLS
                                          files, timeout, compression: the exporter's own)
``OTEL_SERVICE_NAME``                     default ``ollama-fleet-balancer`` / ``-operator``
``OTEL_RESOURCE_ATTRIBUTES``              e.g. ``k8s.pod.name=...`` from the downward API
``OTEL_TRACES_SAMPLER`` and ``_ARG``      default ``parentbased_always_on``; 10%:
                                          ``parentbased_traceidratio`` with ``0.1``
``OTEL_PROPAGATORS``                      default ``tracecontext,baggage`` (W3C)
``OTEL_BSP_*``                            the batch span processor's delay, queue and batch
``OTEL_SDK_DISABLED=true``                off, whatever else is set
========================================  =================================================

What this module decides is only whether to start the SDK at all and which of the two
OTLP exporters the protocol names (the SDK's own auto-configuration would default to gRPC;
the OTLP specification's default is ``http/protobuf``).  When tracing is off nothing of
the SDK or the exporters is imported, and :func:`tracing_from_env` returns None: callers
keep that None and skip every span call, so the cost of tracing off is one ``is None``
test where a span would start.

The SDK reads ``os.environ``; :func:`tracing_from_env` is given the same mapping by the
program's ``main()`` (tests set real variables).  Spans are exported from the SDK's batch
processor thread, never from the event loop; :meth:`Tracing.shutdown` flushes them and
blocks, so an asyncio program calls it in a thread on exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

__all__ = [
    "ENDPOINT_VARIABLES",
    "PROTOCOLS",
    "Tracing",
    "TracingError",
    "tracing_enabled",
    "tracing_from_env",
]

#: Either turns tracing on; the per-signal one wins inside the exporter.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: The OTLP protocols this build exports with (``http/json`` has no Python exporter).
PROTOCOLS = ("http/protobuf", "grpc")
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


class TracingError(ValueError):
    """The OTEL_* environment asks for something this build cannot export (refused at start)."""


@dataclass(frozen=True, slots=True)
class Tracing:
    """A started SDK: the tracer a process makes its spans with, and its provider."""

    tracer: Tracer
    provider: TracerProvider
    protocol: str

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Export every ended span now (blocks: call it in a thread from asyncio code)."""
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocks: call it in a thread from asyncio code)."""
        self.provider.shutdown()


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns tracing on: an OTLP endpoint, the SDK not disabled and the
    traces exporter not set to ``none``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def protocol_of(environ: Mapping[str, str]) -> str:
    """The OTLP protocol the environment names (the specification's default: http/protobuf)."""
    for name in _PROTOCOL_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            if value not in PROTOCOLS:
                raise TracingError(f"{name}={value}: the protocols are {', '.join(PROTOCOLS)}")
            return value
    return PROTOCOLS[0]


def tracing_from_env(
    environ: Mapping[str, str], *, service_name: str, scope: str, version: str = ""
) -> Tracing | None:
    """The SDK started as ``environ`` says, or None when tracing is off.

    ``service_name`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` or a
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` wins); ``scope`` names the
    instrumentation (the package making the spans).
    """
    if not tracing_enabled(environ):
        return None
    protocol = protocol_of(environ)
    # Imported here: a process that does not trace never loads the SDK or gRPC.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = bool(environ.get("OTEL_SERVICE_NAME", "").strip()) or (
        "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    )
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; what is passed
    # here overrides them, so the default name is passed only when neither names one.
    resource = Resource.create({} if named else {"service.name": service_name})
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(_exporter(protocol)))
    tracer = provider.get_tracer(scope, version or None)
    return Tracing(tracer=tracer, provider=provider, protocol=protocol)


def _exporter(protocol: str) -> SpanExporter:
    """The OTLP exporter for ``protocol``; endpoint, headers, TLS, timeout and compression
    are read by the exporter from its OTEL_EXPORTER_OTLP_* variables."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()
