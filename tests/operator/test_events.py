"""Aggregated Events on the real API server: one Event per report, its count rising."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from modelpool_operator.kube import KubeAccess
from modelpool_operator.recorder import EventRecorder
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster, as_json

pytestmark = [pytest.mark.kube]


async def test_repeats_bump_one_event_even_across_restarts(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    kube = KubeAccess(str(kube_cluster.kubeconfig), None)
    co = client.CustomObjectsApi(kube.api)
    core = client.CoreV1Api(kube.api)
    try:
        pool: dict[str, Any] = as_json(await asyncio.to_thread(
            co.create_namespaced_custom_object,
            "ollamafleet.io", "v1alpha1", kube_namespace, "modelpools",
            {"apiVersion": "ollamafleet.io/v1alpha1", "kind": "ModelPool",
             "metadata": {"name": "ev"},
             "spec": {"selector": {"matchLabels": {"a": "b"}}, "models": []}},
        ))  # fmt: skip

        async def listed() -> list[client.CoreV1Event]:
            evs = await asyncio.to_thread(
                core.list_namespaced_event, kube_namespace, field_selector="involvedObject.name=ev"
            )
            return list(evs.items)

        first = EventRecorder(kube, "ollama-fleet-operator", "op-a")
        for _ in range(3):
            first.post(pool, "Warning", "ModelNotFound", "x: no such model")
            await asyncio.sleep(0.05)
        first.post(pool, "Normal", "Loaded", "load y on p0 (load)")
        await first.close()
        evs = await eventually(listed, "two Events", accept=lambda e: len(e) == 2)
        by_reason = {e.reason: e for e in evs}
        assert by_reason["ModelNotFound"].count == 3
        assert by_reason["Loaded"].count == 1
        assert by_reason["ModelNotFound"].involved_object.uid == pool["metadata"]["uid"]
        assert by_reason["ModelNotFound"].reporting_instance == "op-a"

        # A restarted operator finds the same Event (its name is the report's identity).
        second = EventRecorder(kube, "ollama-fleet-operator", "op-a")
        second.post(pool, "Warning", "ModelNotFound", "x: no such model")
        await second.close()
        evs = await eventually(
            listed,
            "count 4 after a restart",
            accept=lambda e: any(x.reason == "ModelNotFound" and x.count == 4 for x in e),
        )
        assert len(evs) == 2
        # Another replica's report is its own Event.
        third = EventRecorder(kube, "ollama-fleet-operator", "op-b")
        third.post(pool, "Warning", "ModelNotFound", "x: no such model")
        await third.close()
        await eventually(listed, "op-b's own Event", accept=lambda e: len(e) == 3)
    finally:
        kube.close()
