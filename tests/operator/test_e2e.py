"""End to end: the operator (in-process) against the real kube-apiserver 1.20.

Pods are API objects whose ``status.podIP`` points at emulated Ollama nodes on
127.0.0.x (no kubelet runs).  Every Kubernetes call of the test goes through a
thread, because the operator shares the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from opentelemetry.trace import Tracer

from modelpool_operator.handlers import run_operator
from modelpool_operator.settings import OperatorSettings
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from ollama_wire.client import OllamaClient
from ollama_wire.names import canonical
from tests.kube.cluster import (
    KubeCluster,
    as_json,
    create_namespace,
    create_node,
    create_ollama_pod,
    delete_pod,
    install_crd,
    set_pod_status,
)

pytestmark = [pytest.mark.kube, pytest.mark.slow]

CRD = Path(__file__).parents[2] / "manifests" / "crds" / "modelpools.ollamafleet.io.yaml"
GROUP, VERSION, PLURAL = "ollamafleet.io", "v1alpha1", "modelpools"
GIB = 2**30
T = TypeVar("T")


def _install_crd(api: client.ApiClient) -> None:
    install_crd(api, CRD)


async def until(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    what: str,
    timeout: float = 30.0,
) -> T:
    """Poll ``probe`` until ``accept`` likes its value; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        value = await probe()
        if accept(value):
            return value
        last = value
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0
) -> T:
    """Poll ``probe`` until it returns something truthy."""
    return await until(probe, bool, what, timeout)  # type: ignore[arg-type]


@dataclass
class Env:
    cluster: KubeCluster
    api: client.ApiClient
    namespace: str
    fleet: EmulatedFleet
    session: aiohttp.ClientSession

    # -- Kubernetes, through threads --------------------------------------------------
    async def k(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    @property
    def co(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    async def apply_pool(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelPool",
            "metadata": {"name": name},
            "spec": spec,
        }
        try:
            current = await self.get_pool(name)
        except ApiException as e:
            if e.status != 404:
                raise
            return as_json(await self.k(
                self.co.create_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, body,
            ))  # fmt: skip
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return as_json(await self.k(
            self.co.replace_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, body,
        ))  # fmt: skip

    async def get_pool(self, name: str) -> dict[str, Any]:
        return as_json(
            await self.k(
                self.co.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
            )
        )

    async def delete_pool(self, name: str) -> None:
        await self.k(
            self.co.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )

    async def condition(self, pool: str, kind: str) -> dict[str, Any]:
        status = (await self.get_pool(pool)).get("status") or {}
        for c in status.get("conditions") or ():
            if c["type"] == kind:
                return dict(c)
        return {}

    async def model_status(self, pool: str, model: str) -> dict[str, Any]:
        status = (await self.get_pool(pool)).get("status") or {}
        for m in status.get("models") or ():
            if m["name"] == model:
                return dict(m)
        return {}

    async def add_pod(self, name: str, node_index: int, vram: str = "24Gi") -> None:
        node = self.fleet.nodes[node_index]
        await self.k(
            create_ollama_pod,
            self.api,
            self.namespace,
            name,
            labels={"app": "ollama"},
            annotations={"ollamafleet.io/vram-bytes": vram},
            port=node.port,
            node_name=f"node-{node_index % 2}",
        )
        await self.k(set_pod_status, self.api, self.namespace, name, ip=node.host, ready=True)

    async def delete_pod(self, name: str) -> None:
        await self.k(delete_pod, self.api, self.namespace, name)

    async def events(self, pool: str) -> list[tuple[str, str, str]]:
        core = client.CoreV1Api(self.api)
        evs = await self.k(
            core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.name={pool}",
        )
        return [(e.type or "", e.reason or "", e.message or "") for e in evs.items]

    def kubectl(self, *args: str) -> str:
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.cluster.kubeconfig), "-n", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    # -- Ollama, as the operator sees it ------------------------------------------
    def ollama(self, node_index: int) -> OllamaClient:
        return OllamaClient(self.session, self.fleet.nodes[node_index].url)

    async def resident(self, model: str) -> list[int]:
        """Indexes of the nodes that have ``model`` in memory, pinned (forever)."""
        key = canonical(model)
        out = []
        for i, node in enumerate(self.fleet.nodes):
            if not node.listening:
                continue
            for m in await self.ollama(i).ps():
                if canonical(m["name"]) == key and m["expires_at"][:4] > "2100":
                    out.append(i)
        return out

    async def installed(self, model: str) -> list[int]:
        key = canonical(model)
        out = []
        for i, node in enumerate(self.fleet.nodes):
            if node.listening and any(
                canonical(m["name"]) == key for m in await self.ollama(i).tags()
            ):
                out.append(i)
        return out


def three_gpu_fleet() -> FleetConfig:
    """Three emulated Ollama pods on 127.0.0.2-4, time-scaled for tests."""
    return FleetConfig(
        # A fixed num_ctx keeps the KV cache (and so resident sizes) small and predictable.
        nodes=[
            NodeConfig(name=f"gpu-{i}", host=f"127.0.0.{i + 2}", context_length=4096)
            for i in range(3)
        ],
        time_scale=0.01,
    )


def operator_settings(
    namespace: str, kubeconfig: Path, fleet: EmulatedFleet, **overrides: Any
) -> OperatorSettings:
    """Fast test settings; manifests come from the fleet's emulated registry."""
    values: dict[str, Any] = {
        "namespaces": (namespace,),
        "standalone": True,
        "kubeconfig": str(kubeconfig),
        "resync_seconds": 1.0,
        "backoff_seconds": 0.1,
        "attempts": 2,
        "ollama_timeout_seconds": 1.0,
        "status_interval_seconds": 0.2,
        "registry_mirrors": (("registry.ollama.ai", fleet.registry.url),),
    }
    values.update(overrides)
    return OperatorSettings.build(**values)


@contextlib.asynccontextmanager
async def operator_thread(
    settings: OperatorSettings, tracer: Tracer | None = None
) -> AsyncIterator[None]:
    """The operator in a thread with a loop of its own, until the block ends."""
    stop, ready = threading.Event(), threading.Event()
    # kopf gets a loop of its own: it cancels every task started after it in its loop.
    errors: list[BaseException] = []

    def operate() -> None:
        try:
            asyncio.run(run_operator(settings, stop_flag=stop, ready_flag=ready, tracer=tracer))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=operate, name="operator", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30), "operator not ready"
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive(), "operator did not stop"
    assert not errors, errors


@contextlib.asynccontextmanager
async def running_operator(
    cluster: KubeCluster,
    namespace: str,
    kubeconfig: Path,
    config: FleetConfig | None = None,
    tracer: Tracer | None = None,
    **overrides: Any,
) -> AsyncIterator[Env]:
    """An emulated fleet (3 Ollama nodes by default) and the operator (as ``kubeconfig``'s
    user), tracing its reconciles with ``tracer`` when given."""
    api = cluster.api_client()
    try:
        async with (
            EmulatedFleet(config or three_gpu_fleet()) as fleet,
            aiohttp.ClientSession() as session,
        ):
            settings = operator_settings(namespace, kubeconfig, fleet, **overrides)
            async with operator_thread(settings, tracer):
                yield Env(cluster, api, namespace, fleet, session)
    finally:
        api.close()


@pytest.fixture
async def env(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> AsyncIterator[Env]:
    async with running_operator(kube_cluster, kube_namespace, kube_cluster.kubeconfig) as e:
        yield e


def _cond(pool: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (pool.get("status") or {}).get("conditions") or ():
        if c["type"] == kind:
            return dict(c)
    return {}


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

    pool = await until(
        lambda: env.get_pool("chat"),
        lambda p: _cond(p, "Ready").get("status") == "True",
        "pool chat Ready",
    )
    cond = _cond(pool, "Ready")
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
        _install_crd(api)
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
        pool = await until(
            lambda: e.get_pool("rbac"),
            lambda p: _cond(p, "Ready").get("status") == "True",
            "Ready as the ServiceAccount",
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
