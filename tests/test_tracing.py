"""The OpenTelemetry bootstrap: on and off from the OTEL_* environment, both OTLP protocols
delivering to a real receiver on loopback, the SDK's sampler and resource variables honoured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping

import pytest
from opentelemetry import trace

from ollama_wire.tracing import Tracing, TracingError, tracing_enabled, tracing_from_env
from tests.harness.otlp import SpanSink, grpc_receiver, http_receiver, otel_env


def _started(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Tracing:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracing = tracing_from_env(env, service_name="ollama-fleet-test", scope="tests")
    assert tracing is not None
    return tracing


@pytest.mark.parametrize(
    ("env", "on"),
    [
        pytest.param({}, False, id="no endpoint: off"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True, id="base"),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
            True,
            id="traces endpoint",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "TRUE"},
            False,
            id="SDK disabled",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"},
            False,
            id="traces exporter none",
        ),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False, id="blank endpoint"),
    ],
)
def test_on_only_with_an_endpoint(env: dict[str, str], on: bool) -> None:
    assert tracing_enabled(env) is on


def test_off_returns_none_and_loads_no_sdk() -> None:
    code = (
        "import sys\n"
        "from ollama_wire.tracing import tracing_from_env\n"
        "assert tracing_from_env({}, service_name='s', scope='t') is None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter', 'grpc'))]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_protocol_is_refused() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with pytest.raises(TracingError, match="http/json"):
        tracing_from_env(env, service_name="s", scope="t")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_reach_a_receiver(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    sink = SpanSink()
    receiver = http_receiver if protocol == "http/protobuf" else grpc_receiver
    async with receiver(sink) as endpoint:
        env = otel_env(
            endpoint,
            protocol,
            OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=balancer-0",
            OTEL_EXPORTER_OTLP_HEADERS="x-collector-key=s3cret",
        )
        tracing = _started(monkeypatch, env)
        assert tracing.protocol == protocol
        parent = tracing.tracer.start_span("parent", kind=trace.SpanKind.SERVER)
        child = tracing.tracer.start_span(
            "child", context=trace.set_span_in_context(parent), attributes={"n": 3}
        )
        child.add_event("something", {"what": "it"})
        child.end()
        parent.end()
        assert await asyncio.to_thread(tracing.flush)
        await sink.wait_for(lambda spans: len(spans) >= 2)
        await asyncio.to_thread(tracing.shutdown)
    (p,) = sink.named("parent")
    (c,) = sink.named("child")
    assert (p.kind, p.parent_id) == ("server", "")
    assert (c.trace_id, c.parent_id) == (p.trace_id, p.span_id)
    assert c.attributes == {"n": 3}
    assert c.event("something") == {"what": "it"}
    assert p.resource["service.name"] == "ollama-fleet-test"  # the default, none set
    assert p.resource["k8s.pod.name"] == "balancer-0"
    assert p.scope == "tests"
    assert all(h.get("x-collector-key") == "s3cret" for h in sink.headers)


async def test_service_name_and_sampler_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = SpanSink()
    async with http_receiver(sink) as endpoint:
        env = otel_env(
            endpoint,
            "http/protobuf",
            OTEL_SERVICE_NAME="gateway",
            OTEL_TRACES_SAMPLER="traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.1",
        )
        tracing = _started(monkeypatch, env)
        for _ in range(400):
            tracing.tracer.start_span("sampled?").end()
        tracing.tracer.start_span("last").end()
        await asyncio.to_thread(tracing.shutdown)
    n = len(sink.named("sampled?"))
    assert 10 <= n <= 90  # 10% of 400, give or take
    assert {s.resource["service.name"] for s in sink.spans} == {"gateway"}
