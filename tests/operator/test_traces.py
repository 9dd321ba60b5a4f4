"""The operator's traces (issue 25): each reconcile of a ModelPool is a span, each pod action
it hands out a child span ending with its outcome, received over real OTLP/gRPC."""

from __future__ import annotations

import asyncio

import pytest

from ollama_wire.tracing import tracing_from_env
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster
from tests.harness.operator_env import pool_condition, running_operator
from tests.harness.otlp import ReceivedSpan, SpanSink, grpc_receiver, otel_env

pytestmark = [pytest.mark.kube]


async def test_reconciles_and_their_actions_are_traced(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    modelpool_crd: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = SpanSink()
    async with grpc_receiver(sink) as endpoint:
        env = otel_env(endpoint, "grpc")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        tracing = tracing_from_env(env, service_name="ollama-fleet-operator", scope="op")
        assert tracing is not None
        async with running_operator(
            kube_cluster, kube_namespace, kube_cluster.kubeconfig, tracer=tracing.tracer
        ) as fleet_env:
            for i in range(2):
                await fleet_env.add_pod(f"ollama-{i}", i)
            await fleet_env.apply_pool(
                "chat",
                {
                    "selector": {"matchLabels": {"app": "ollama"}},
                    "models": [{"name": "llama3.2:1b", "replicas": 2}],
                },
            )
            await eventually(
                lambda: fleet_env.get_pool("chat"),
                "pool chat Ready",
                accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            )

            def loads_done(spans: list[ReceivedSpan]) -> bool:
                return len([s for s in spans if s.name.startswith("load llama3.2:1b")]) >= 2

            await asyncio.to_thread(tracing.flush)
            await sink.wait_for(loads_done, timeout=20)
        await asyncio.to_thread(tracing.shutdown)
    passes = [s for s in sink.spans if s.name == f"reconcile ModelPool {kube_namespace}/chat"]
    assert passes
    for p in passes:
        assert p.attributes["k8s.namespace.name"] == kube_namespace
        assert p.attributes["ollama_fleet.pool"] == "chat"
        assert p.parent_id == ""  # each reconcile is a trace of its own
        assert p.event("observed") is not None
    by_id = {p.span_id: p for p in passes}
    actions = [s for s in sink.spans if s.parent_id in by_id]
    kinds = {
        (s.attributes["ollama_fleet.action"], s.attributes["ollama_fleet.pod"]) for s in actions
    }
    assert {("pull", "ollama-0"), ("pull", "ollama-1")} <= kinds
    assert {("load", "ollama-0"), ("load", "ollama-1")} <= kinds
    for a in actions:
        assert a.attributes["gen_ai.request.model"] == "llama3.2:1b"
        assert a.status != 2, a  # every action succeeded
        parent = by_id[a.parent_id]
        planned = parent.event("planned")
        assert planned is not None and planned["ollama_fleet.actions.started"] >= 1
    assert {s.resource["service.name"] for s in sink.spans} == {"ollama-fleet-operator"}
