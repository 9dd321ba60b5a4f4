"""Issue 17 item 7: conditions per the API conventions, and a ledger that survives losing status.

On the real API server: the CRD's schema holds conditions to metav1.Condition (a list
keyed on ``type``, every field required), and the ledger prune relies on lives in an
annotation, so a restore that drops ``status`` does not make the pool forget (and so never
prune) what it put on the pods.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelpool_operator.state import (
    LEDGER_ANNOTATION,
    Owned,
    ledger_from_annotation,
    ledger_of,
    ledger_to_annotation,
)
from ollama_emulator import EmulatedFleet
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster
from tests.harness.operator_env import (
    Env,
    operator_settings,
    operator_thread,
    pool_condition,
    three_gpu_fleet,
)

GROUP, VERSION, PLURAL = "ollamafleet.io", "v1alpha1", "modelpools"
SEL = {"matchLabels": {"app": "ollama"}}
K = "registry.ollama.ai/library/a:latest"


# ---------------------------------------------------------------------- the ledger (pure)


def test_ledger_annotation_round_trip() -> None:
    ledger = (
        Owned("p1", K, "a", loaded=True, pulled=True, embedding=True),
        Owned("p0", K, "a", pulled=True),
        Owned("p2", K, "a"),  # empty: not written
    )
    text = ledger_to_annotation(ledger)
    assert text == f'[["p0","{K}","a","P"],["p1","{K}","a","LPE"]]'
    assert ledger_from_annotation(text) == tuple(sorted(ledger[:2]))


@pytest.mark.parametrize(
    ("annotation", "status_owned", "expected"),
    [
        pytest.param(f'[["p0","{K}","a","L"]]', [], ("p0",), id="the annotation wins"),
        pytest.param(None, [{"pod": "p9", "model": K, "name": "a", "loaded": True}], ("p9",),
                     id="no annotation yet: status.owned (pools from before)"),
        pytest.param("[]", [{"pod": "p9", "model": K, "name": "a", "loaded": True}], (),
                     id="an empty ledger is a ledger"),
        pytest.param("{not json", [], (), id="garbage: status, here empty"),
        pytest.param('[["p0","k","a"],["p1","k","a","L"],3]', [], ("p1",), id="bad rows skipped"),
    ],
)  # fmt: skip
def test_ledger_of(
    annotation: str | None, status_owned: list[dict[str, Any]], expected: tuple[str, ...]
) -> None:
    meta: dict[str, Any] = {"annotations": {LEDGER_ANNOTATION: annotation}} if annotation else {}
    body = {"metadata": meta, "status": {"owned": status_owned}}
    assert tuple(o.pod for o in ledger_of(body)) == expected


# ------------------------------------------------------------------ the CRD (API server)


async def _status_patch(api: client.ApiClient, ns: str, name: str, status: dict[str, Any]) -> None:
    co = client.CustomObjectsApi(api)
    await asyncio.to_thread(
        co.patch_namespaced_custom_object_status,
        GROUP, VERSION, ns, PLURAL, name, {"status": status},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


@pytest.mark.kube
async def test_the_crd_holds_conditions_to_the_conventions(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    with kube_cluster.client() as api:
        co = client.CustomObjectsApi(api)
        await asyncio.to_thread(
            co.create_namespaced_custom_object, GROUP, VERSION, kube_namespace, PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelPool", "metadata": {"name": "c"},
             "spec": {"selector": SEL, "models": []}},
        )  # fmt: skip
        good = {
            "type": "Ready", "status": "True", "reason": "AllModelsReady", "message": "0/0",
            "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1,
        }  # fmt: skip
        await _status_patch(api, kube_namespace, "c", {"conditions": [good]})
        for bad, why in [
            ({k: v for k, v in good.items() if k != "message"}, "message: Required value"),
            ({k: v for k, v in good.items() if k != "lastTransitionTime"}, "lastTransitionTime"),
            ({**good, "reason": "not a reason"}, "reason in body should match"),
            ({**good, "status": "Maybe"}, "supported values"),
        ]:
            with pytest.raises(ApiException) as info:
                await _status_patch(api, kube_namespace, "c", {"conditions": [bad]})
            assert info.value.status == 422
            assert why in json.loads(info.value.body or "{}")["message"], bad
        # One condition per type: a list-map (server-side apply merges by type).  The 1.20
        # API server serves the declaration; refusing duplicates came with later versions.
        crd = await asyncio.to_thread(
            client.ApiextensionsV1Api(api).read_custom_resource_definition, f"{PLURAL}.{GROUP}"
        )
        validation = crd.spec.versions[0].schema
        assert validation is not None and validation.open_apiv3_schema is not None
        schema = validation.open_apiv3_schema
        assert schema.properties is not None
        status_props = schema.properties["status"].properties
        assert status_props is not None
        conds = status_props["conditions"]
        assert (conds.x_kubernetes_list_type, conds.x_kubernetes_list_map_keys) == (
            "map",
            ["type"],
        )


@pytest.mark.kube
@pytest.mark.slow
async def test_conditions_written_and_a_ledger_that_survives_losing_status(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    spec = {"selector": SEL, "prune": True, "models": [{"name": "llama3.2:1b", "replicas": 1}]}
    api = kube_cluster.api_client()
    async with EmulatedFleet(three_gpu_fleet()) as fleet, aiohttp.ClientSession() as session:
        env = Env(kube_cluster, api, kube_namespace, fleet, session)
        settings = operator_settings(kube_namespace, kube_cluster.kubeconfig, fleet)
        try:
            async with operator_thread(settings):
                await env.add_pod("ollama-0", 0)
                await env.apply_pool("keep", spec)
                pool = await eventually(
                    lambda: env.get_pool("keep"),
                    "Ready, with its ledger annotation",
                    accept=lambda p: (
                        pool_condition(p, "Ready").get("status") == "True"
                        and LEDGER_ANNOTATION in (p["metadata"].get("annotations") or {})
                    ),
                )
                conditions = pool["status"]["conditions"]
                assert [c["type"] for c in conditions] == ["Ready", "Reconciling", "Degraded"]
                for c in conditions:
                    assert set(c) == {
                        "type", "status", "reason", "message", "lastTransitionTime",
                        "observedGeneration",
                    }  # fmt: skip
                    assert c["message"]
                    assert c["observedGeneration"] == pool["metadata"]["generation"]
                annotation = pool["metadata"]["annotations"][LEDGER_ANNOTATION]
                ledger = ledger_from_annotation(annotation)
                assert ledger is not None
                assert [(o.pod, o.loaded, o.pulled) for o in ledger] == [("ollama-0", True, True)]
            # A restore from a backup without status, while the operator is down.
            await _status_patch(api, kube_namespace, "keep", {"owned": None, "models": None})
            assert "owned" not in (await env.get_pool("keep"))["status"]
            async with operator_thread(settings):
                await eventually(
                    lambda: env.get_pool("keep"),
                    "status.owned mirrored from the annotation again",
                    accept=lambda p: bool((p.get("status") or {}).get("owned")),
                )
                await env.delete_pool("keep")

                async def pruned() -> bool:
                    gone = not await env.resident("llama3.2:1b")
                    return gone and not await env.installed("llama3.2:1b")

                # The ledger came from the annotation: prune knows the pool pulled and pinned it.
                await eventually(pruned, "the prune after a restore that lost status")
        finally:
            api.close()
