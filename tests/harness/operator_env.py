"""The operator in-process against the real kube-apiserver, with emulated Ollama pods.

Pods are API objects whose ``status.podIP`` points at emulated Ollama nodes on 127.0.0.x
(no kubelet runs).  Every Kubernetes call of a test goes through a thread
(:meth:`Env.k`), because the operator runs beside the test; it gets a loop of its own
(:func:`operator_thread`), as kopf cancels every task started after it in its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from opentelemetry.trace import Tracer

from modelpool_operator.handlers import run_operator
from modelpool_operator.settings import OperatorSettings
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from ollama_wire.client import OllamaClient
from ollama_wire.names import canonical

from .kube import (
    KubeCluster,
    as_json,
    create_ollama_pod,
    delete_pod,
    install_crd,
    set_pod_status,
)

__all__ = [
    "CRD",
    "GROUP",
    "PLURAL",
    "VERSION",
    "Env",
    "install_modelpool_crd",
    "operator_settings",
    "operator_thread",
    "pool_condition",
    "running_operator",
    "three_gpu_fleet",
]

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "modelpools.ollamafleet.io.yaml"
GROUP, VERSION, PLURAL = "ollamafleet.io", "v1alpha1", "modelpools"
T = TypeVar("T")


def install_modelpool_crd(api: client.ApiClient) -> None:
    """The ModelPool CRD of ``manifests/crds``, created or updated, and Established."""
    install_crd(api, CRD)


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
    """The operator in a thread with a loop of its own, until the block ends; ``tracer``
    traces its reconciles."""
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


def pool_condition(pool: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition ``kind`` of a ModelPool object (``{}`` when it has none)."""
    for c in (pool.get("status") or {}).get("conditions") or ():
        if c["type"] == kind:
            return dict(c)
    return {}
