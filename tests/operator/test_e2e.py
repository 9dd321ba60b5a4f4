"""End to end: the operator (in-process) against the real kube-apiserver 1.20, with
emulated Ollama pods (:mod:`tests.harness.operator_env`)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.eventually import eventually
from tests.harness.kube import (
    KubeCluster,
    create_namespace,
    create_node,
)
from tests.harness.operator_env import (
    Env,
    install_modelpool_crd,
    pool_condition,
    running_operator,
)

pytestmark = [pytest.mark.kube, pytest.mark.slow]


@pytest.fixture
async def env(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> AsyncIterator[Env]:
    async with running_operator(kube_cluster, kube_namespace, kube_cluster.kubeconfig) as e:
        yield e


async def _all_pods(env: Env, n: int = 3) -> None:
    for i in range(n):
        await env.add_pod(f"ollama-{i}", i)


async def test_pool_pulls_loads_and_reports_ready(env: Env) -> None:
    await _all_pods(env)
    await env.apply_pool(
        "chat",
        {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": [
                {"name": "llama3.2:1b", "replicas": 2, "pull": "loaded"},
                {"name": "nomic-embed-text", "replicas": "all"},
            ],
        },
    )

    pool = await eventually(
        lambda: env.get_pool("chat"),
        "pool chat Ready",
        accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
    )
    cond = pool_condition(pool, "Ready")
    assert cond["reason"] == "AllModelsReady"
    assert sorted(await env.resident("llama3.2:1b")) == [0, 1]  # spread over node-0, node-1
    assert sorted(await env.installed("llama3.2:1b")) == [0, 1]  # pull: loaded
    assert sorted(await env.resident("nomic-embed-text")) == [0, 1, 2]

    pool = await env.get_pool("chat")
    status = pool["status"]
    assert status["observedGeneration"] == pool["metadata"]["generation"]
    assert status["readyModels"] == "2/2"
    assert status["loadedReplicas"] == "5/5"
    llama = await env.model_status("chat", "llama3.2:1b")
    assert llama["loadedOn"] == ["ollama-0", "ollama-1"]
    assert (llama["desired"], llama["loaded"], llama["pulled"]) == (2, 2, 2)

    reasons = {r for _, r, _ in await eventually(lambda: env.events("chat"), "events")}
    assert {"Pulled", "Loaded", "Ready"} <= reasons

    table = await asyncio.to_thread(env.kubectl, "get", "mp")
    print("\n$ kubectl get mp\n" + table)  # for the README
    assert table.split("\n")[1].split()[:4] == ["chat", "True", "2/2", "5/5"]

    # Scale down: the surplus replica is unloaded, nothing else moves.
    await env.apply_pool(
        "chat",
        {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": [
                {"name": "llama3.2:1b", "replicas": 1, "pull": "loaded"},
                {"name": "nomic-embed-text", "replicas": "all"},
            ],
        },
    )

    async def one_copy() -> list[int] | None:
        r = await env.resident("llama3.2:1b")
        return r if len(r) == 1 else None

    assert await eventually(one_copy, "one llama replica") == [0]
    assert sorted(await env.resident("nomic-embed-text")) == [0, 1, 2]


async def test_deleted_pod_load_moves_elsewhere(env: Env) -> None:
    await _all_pods(env)
    await env.apply_pool(
        "one",
        {"selector": {"matchLabels": {"app": "ollama"}}, "models": [{"name": "llama3.2:1b"}]},
    )

    async def loaded_on() -> list[str] | None:
        m = await env.model_status("one", "llama3.2:1b")
        return m.get("loadedOn") or None

    first = await eventually(loaded_on, "first placement")
    assert len(first) == 1
    await env.delete_pod(first[0])

    async def moved() -> list[str] | None:
        now = await loaded_on()
        return now if now and now != first else None

    second = await eventually(moved, "the load to move")
    assert len(second) == 1 and second[0] != first[0]
    node = int(second[0].rsplit("-", 1)[1])
    assert node in await env.resident("llama3.2:1b")
    assert (await env.condition("one", "Ready"))["status"] == "True"


async def test_evicted_model_is_reloaded(env: Env) -> None:
    await _all_pods(env, 1)
    await env.apply_pool(
        "warm",
        {"selector": {"matchLabels": {"app": "ollama"}}, "models": [{"name": "llama3.2:1b"}]},
    )

    async def resident() -> list[int] | None:
        return await env.resident("llama3.2:1b") or None

    await eventually(resident, "first load")
    # Ollama evicts silently (keep_alive expiry, a bigger model, OOM): nobody tells the operator.
    await env.ollama(0).unload("llama3.2:1b")

    async def gone() -> bool:
        return not await env.resident("llama3.2:1b")

    await eventually(gone, "the unload")
    assert await eventually(resident, "reload by the resync timer", timeout=15) == [0]
    messages = [m for _, r, m in await env.events("warm") if r == "Loaded"]
    assert any("reload after eviction" in m for m in messages), messages


async def test_bad_spec_is_refused_by_the_api_server(env: Env) -> None:
    # The 1.20 API server names no field for a failed junctor: the CRD's descriptions do.
    exclusive = '"spec.models" must not validate the schema (not)'
    cases: Sequence[tuple[dict[str, Any], str]] = [
        ({"name": "llama3.2:1b!"}, "spec.models.name in body should match"),
        ({"name": "llama3.2:1b", "replicas": -1}, "should be greater than or equal to 0"),
        (
            {"name": "llama3.2:1b", "replicas": "most"},
            "spec.models.replicas in body should match '^all$'",
        ),
        (
            {"name": "llama3.2:1b", "keepAlive": "5 minutes"},
            "spec.models.keepAlive in body should match",
        ),
        ({"name": "llama3.2:1b", "pull": "never"}, 'supported values: "all", "loaded"'),
        # A fixed count or autoscaling, not both; autoscaling needs its bound.
        ({"name": "llama3.2:1b", "replicas": 2, "maxReplicas": 3}, exclusive),
        ({"name": "llama3.2:1b", "replicas": 1, "minReplicas": 0}, exclusive),
        ({"name": "llama3.2:1b", "minReplicas": 1}, exclusive),
        ({"name": "llama3.2:1b", "maxReplicas": 0}, "should be greater than or equal to 1"),
        (
            {"name": "llama3.2:1b", "maxReplicas": 2, "targetRequests": 0},
            "should be greater than 0",
        ),
    ]
    for model, message in cases:
        with pytest.raises(ApiException) as info:
            await env.apply_pool(
                "bad", {"selector": {"matchLabels": {"a": "b"}}, "models": [model]}
            )
        assert info.value.status == 422, model
        assert message in json.loads(info.value.body or "{}")["message"], model
    with pytest.raises(ApiException) as info:
        await env.apply_pool("bad", {"models": []})
    assert info.value.status == 422
    assert "spec.selector: Required value" in json.loads(info.value.body or "{}")["message"]


async def test_invalid_spec_past_the_schema_is_degraded(env: Env) -> None:
    await _all_pods(env, 1)
    await env.apply_pool(
        "dup",
        {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": [{"name": "llama3.2:1b"}, {"name": "library/llama3.2:1b"}],
        },
    )

    async def degraded() -> dict[str, Any] | None:
        c = await env.condition("dup", "Degraded")
        return c if c.get("status") == "True" else None

    cond = await eventually(degraded, "InvalidSpec")
    assert cond["reason"] == "InvalidSpec"
    assert "are the same model" in cond["message"]


async def test_unreachable_pod_degrades_and_recovers(env: Env) -> None:
    await _all_pods(env, 2)
    await env.apply_pool(
        "ha",
        {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": [{"name": "llama3.2:1b", "replicas": "all"}],
        },
    )

    async def status_is(kind: str, value: str) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        async def probe() -> dict[str, Any] | None:
            c = await env.condition("ha", kind)
            return c if c.get("status") == value else None

        return probe

    await eventually(await status_is("Ready", "True"), "Ready")
    await env.fleet.nodes[1].stop_listening()
    cond = await eventually(await status_is("Degraded", "True"), "Degraded")
    assert cond["reason"] == "PodUnreachable"
    assert "ollama-1" in cond["message"]
    pods = {p["name"]: p for p in (await env.get_pool("ha"))["status"]["pods"]}
    assert pods["ollama-1"]["reachable"] is False
    assert pods["ollama-0"]["reachable"] is True

    await env.fleet.nodes[1].start_listening()
    cond = await eventually(await status_is("Degraded", "False"), "recovery")
    assert cond["reason"] == "AsExpected"
    assert (await env.condition("ha", "Ready"))["status"] == "True"
    reasons = [r for _, r, _ in await env.events("ha")]
    assert "PodUnreachable" in reasons and "Recovered" in reasons


async def test_deleting_a_pruning_pool_unloads_what_it_loaded(env: Env) -> None:
    await _all_pods(env, 2)
    # A model the pool did not put there: prune must leave it alone.
    async for _ in env.ollama(0).pull("llama3.2:1b"):
        pass
    await env.ollama(0).load("llama3.2:1b", keep_alive=-1)
    await env.apply_pool(
        "tmp",
        {
            "selector": {"matchLabels": {"app": "ollama"}},
            "prune": True,
            "models": [{"name": "gemma2:2b", "replicas": "all"}],
        },
    )

    async def ready() -> bool:
        return (await env.condition("tmp", "Ready")).get("status") == "True"

    await eventually(ready, "Ready")
    assert sorted(await env.resident("gemma2:2b")) == [0, 1]
    pool = await env.get_pool("tmp")
    assert "ollamafleet.io/finalizer" in pool["metadata"]["finalizers"]

    await env.delete_pool("tmp")

    async def deleted() -> bool:
        try:
            await env.get_pool("tmp")
        except ApiException as e:
            return bool(e.status == 404)
        return False

    await eventually(deleted, "the pool to be deleted")
    assert await env.resident("gemma2:2b") == []
    assert await env.installed("gemma2:2b") == []  # the pool pulled it, so it deletes it
    assert await env.resident("llama3.2:1b") == [0]  # not the pool's: untouched
    assert await env.installed("llama3.2:1b") == [0]


async def test_two_pools_on_the_same_pods_do_not_fight(env: Env) -> None:
    await env.add_pod("ollama-0", 0, vram="4Gi")
    sel = {"matchLabels": {"app": "ollama"}}
    await env.apply_pool("first", {"selector": sel, "models": [{"name": "llama3.2:3b"}]})

    async def ready(pool: str) -> bool:
        return (await env.condition(pool, "Ready")).get("status") == "True"

    await eventually(lambda: ready("first"), "first Ready")
    # The second pool wants a model that does not fit next to the first pool's (4 GiB).
    await env.apply_pool(
        "second",
        {"selector": sel, "models": [{"name": "phi3:mini"}, {"name": "llama3.2:3b"}]},
    )

    async def degraded() -> dict[str, Any] | None:
        c = await env.condition("second", "Degraded")
        return c if c.get("status") == "True" else None

    cond = await eventually(degraded, "second Degraded")
    assert cond["reason"] == "InsufficientVRAM"
    assert "phi3:mini" in cond["message"]
    # Several resyncs later nothing was evicted and nobody thrashed.
    await asyncio.sleep(3)
    assert await env.resident("llama3.2:3b") == [0]
    assert await env.resident("phi3:mini") == []
    assert (await env.condition("first", "Ready"))["status"] == "True"
    table = await asyncio.to_thread(env.kubectl, "get", "mp", "-o", "wide")
    print("\n$ kubectl get mp -o wide\n" + table)  # for the README
    assert [line.split()[:7] for line in table.splitlines()[1:]] == [
        ["first", "True", "1/1", "1/1", "False", "Reconciled", "AsExpected"],
        ["second", "False", "1/2", "1/2", "False", "Reconciled", "InsufficientVRAM"],
    ]
    shared = await env.model_status("second", "llama3.2:3b")
    assert shared["loadedOn"] == ["ollama-0"]  # the same copy counts for both pools
    stats = env.fleet.nodes[0].stats
    print("emulator stats:", stats)


RBAC = Path(__file__).parents[2] / "operator" / "modelpool_operator" / "rbac.yaml"


def _service_account_kubeconfig(cluster: KubeCluster, namespace: str, path: Path) -> Path:
    """Apply rbac.yaml into ``namespace`` and write a kubeconfig for its ServiceAccount."""
    from kubernetes import utils

    docs = []
    for doc in yaml.safe_load_all(RBAC.read_text()):
        text = json.dumps(doc).replace('"ollama"', json.dumps(namespace))
        doc = json.loads(text)
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += f"-{namespace}"
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{namespace}"
        docs.append(doc)
    with cluster.client() as api:
        create_namespace(api, namespace)
        for doc in docs:
            utils.create_from_dict(api, doc)
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + 30
        token = ""
        while not token and time.monotonic() < deadline:
            sa = core.read_namespaced_service_account("ollama-fleet-operator", namespace)
            for ref in sa.secrets or ():
                secret = core.read_namespaced_secret(str(ref.name), namespace)
                token = base64.b64decode((secret.data or {}).get("token", "")).decode()
            time.sleep(0.2)
        assert token, "the token controller minted no ServiceAccount token"
        # Pods are bound to nodes; the controller-manager deletes pods of unknown nodes.
        for n in ("node-0", "node-1"):
            create_node(api, n)
        # The default ServiceAccount is made by the controller-manager here; wait for it.
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", namespace)
                break
            except ApiException:
                time.sleep(0.2)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": cluster.url, "certificate-authority": str(cluster.ca_path)},
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


async def test_minimal_rbac_is_enough(
    kube_cluster_with_controllers: KubeCluster, tmp_path: Path
) -> None:
    """The operator runs as a ServiceAccount bound only to rbac.yaml (RBAC is enforced)."""
    cluster = kube_cluster_with_controllers
    namespace = f"rbac-{os.getpid()}"
    with cluster.client() as api:
        install_modelpool_crd(api)
    kubeconfig = await asyncio.to_thread(
        _service_account_kubeconfig, cluster, namespace, tmp_path / "kubeconfig"
    )
    # Leader election on: the Lease rules of rbac.yaml are exercised too.
    async with running_operator(cluster, namespace, kubeconfig, standalone=False) as e:
        await _all_pods(e, 2)
        await e.apply_pool(
            "rbac",
            {
                "selector": {"matchLabels": {"app": "ollama"}},
                "prune": True,
                "models": [{"name": "llama3.2:1b", "replicas": 1}],
            },
        )
        pool = await eventually(
            lambda: e.get_pool("rbac"),
            "Ready as the ServiceAccount",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
        )
        assert "ollamafleet.io/finalizer" in pool["metadata"]["finalizers"]
        reasons = {r for _, r, _ in await e.events("rbac")}
        assert {"Pulled", "Loaded"} <= reasons  # events: create
        coordination = client.CoordinationV1Api(e.api)
        lease = await e.k(coordination.read_namespaced_lease, "ollama-fleet-operator", namespace)
        assert lease.spec.holder_identity  # leases: create, get, update
        await e.delete_pool("rbac")

        async def gone() -> bool:
            try:
                await e.get_pool("rbac")
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        await eventually(gone, "finalizer removed")
        assert await e.resident("llama3.2:1b") == []
