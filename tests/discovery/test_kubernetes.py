"""Kubernetes discovery against the real kube-apiserver (pods are API objects whose
status a test writes, see tests/harness/kube.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ollama_balancer.discovery import KubernetesDiscovery, WatchTuning
from ollama_balancer.settings import DiscoveryKind, DiscoverySettings
from tests.harness.discovery import Recorder, discovery_threads, running
from tests.harness.kube import (
    KubeCluster,
    create_default_service_account,
    create_namespace,
    create_ollama_pod,
    delete_namespace,
    delete_pod,
    free_port,
    set_pod_ready,
    set_pod_status,
)

pytestmark = pytest.mark.kube

SELECTOR = "app=ollama"


def watching(
    namespaces: tuple[str, ...], kubeconfig: Path, selector: str = SELECTOR
) -> DiscoverySettings:
    return DiscoverySettings(
        kind=DiscoveryKind.KUBERNETES,
        kube_namespaces=namespaces,
        kube_selector=selector,
        kubeconfig=str(kubeconfig),
    )


def make_discovery(cluster: KubeCluster, *namespaces: str, **kw: Any) -> KubernetesDiscovery:
    kw.setdefault("backoff_initial", 0.1)
    kw.setdefault("backoff_max", 0.5)
    return KubernetesDiscovery(watching(namespaces, cluster.kubeconfig), tuning=WatchTuning(**kw))


class Pods:
    """Blocking pod helpers run off the event loop."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace

    async def _run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, self.api, self.ns, *args, **kw)

    async def add(self, name: str, ip: str | None = None, **kw: Any) -> None:
        kw.setdefault("labels", {"app": "ollama"})
        await self._run(create_ollama_pod, name, **kw)
        if ip is not None:
            await self._run(set_pod_status, name, ip=ip, ready=True)

    async def ready(self, name: str, ready: bool) -> None:
        await self._run(set_pod_ready, name, ready)

    async def delete(self, name: str) -> None:
        await self._run(delete_pod, name)

    async def touch_other(self, name: str) -> None:
        """Write something unrelated: advances etcd's revision past the watch's."""
        core = client.CoreV1Api(self.api)
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
        await asyncio.to_thread(core.create_namespaced_config_map, self.ns, body)


@pytest.fixture
def pods(kube_api: client.ApiClient, kube_namespace: str) -> Pods:
    return Pods(kube_api, kube_namespace)


def ip_of(url: str) -> str:
    return url.split("//", 1)[1].rsplit(":", 1)[0]


def assert_never_empty_after_first(rec: Recorder) -> None:
    nonempty = [i for i, s in enumerate(rec.sets) if s]
    if nonempty:
        assert all(rec.sets[i] for i in range(nonempty[0], len(rec.sets))), rec.sets


def assert_changes_only(rec: Recorder) -> None:
    for before, after in zip(rec.sets, rec.sets[1:], strict=False):
        assert before != after, "published an unchanged set"


async def test_add_not_ready_ready_again_remove(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    async with running(make_discovery(kube_cluster, kube_namespace)) as rec:
        await rec.wait_names()  # the first list publishes the (empty) set

        await pods.add("ollama-0")  # no IP, not Ready yet
        await pods.add("other", ip="127.0.0.9", labels={"app": "something-else"})
        await pods._run(set_pod_status, "ollama-0", ip="127.0.0.2", ready=False)
        await pods.add(
            "ollama-1",
            ip="127.0.0.3",
            port=11500,
            env={"OLLAMA_NUM_PARALLEL": "3"},
            annotations={"ollamafleet.io/vram-bytes": "24Gi"},
            node_name="gpu-node-7",
        )
        latest = await rec.wait_names("ollama-1")
        assert latest == {"ollama-1": "http://127.0.0.3:11500"}
        (b1,) = rec.sets[-1]
        assert (b1.slots, b1.vram_bytes, b1.node) == (3, 24 * 2**30, "gpu-node-7")

        await pods.ready("ollama-0", True)
        latest = await rec.wait_names("ollama-0", "ollama-1")
        assert latest["ollama-0"] == "http://127.0.0.2:11434"

        await pods.ready("ollama-0", False)
        await rec.wait_names("ollama-1")
        await pods.ready("ollama-0", True)
        await rec.wait_names("ollama-0", "ollama-1")

        await pods.delete("ollama-1")
        await rec.wait_names("ollama-0")
        await pods.delete("ollama-0")
        await rec.wait_names()
    assert_changes_only(rec)
    assert all("other" not in {b.name for b in s} for s in rec.sets)


async def test_watch_410_gone_relists_and_sees_changes_made_behind_its_back(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    """A fresh apiserver's watch cache starts at etcd's current revision, so resuming from an
    older resourceVersion answers 410 Gone.  A pod deleted straight from etcd while the
    apiserver was down never produces a watch event: only the relist can notice it."""
    discovery = make_discovery(kube_cluster, kube_namespace)
    await pods.add("keep", ip="127.0.0.2")
    await pods.add("ghost", ip="127.0.0.3")
    async with running(discovery) as rec:
        await rec.wait_names("keep", "ghost")
        stats = discovery.stats[kube_namespace]
        assert (stats.lists, stats.expired) == (1, 0)

        await pods.touch_other("advance-revision")
        await asyncio.to_thread(kube_cluster.stop_apiserver)
        deleted = kube_cluster.etcd_delete(f"/registry/pods/{kube_namespace}/ghost")
        assert deleted == 1
        await asyncio.to_thread(kube_cluster.start_apiserver)

        await rec.wait_names("keep", timeout=30)
        assert stats.expired >= 1 and stats.lists >= 2

        await pods.add("new", ip="127.0.0.4")  # the watch runs again after the relist
        await rec.wait_names("keep", "new")
    assert_never_empty_after_first(rec)


async def test_apiserver_down_keeps_last_set_then_picks_up_changes(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    discovery = make_discovery(kube_cluster, kube_namespace)
    await pods.add("ollama-0", ip="127.0.0.2")
    await pods.add("ollama-1", ip="127.0.0.3")
    async with running(discovery) as rec:
        await rec.wait_names("ollama-0", "ollama-1")
        stats = discovery.stats[kube_namespace]
        await asyncio.to_thread(kube_cluster.stop_apiserver)
        try:
            async with asyncio.timeout(20):
                while stats.errors < 3:  # it noticed, and retried with backoff
                    await asyncio.sleep(0.05)
            assert rec.latest == {
                "ollama-0": "http://127.0.0.2:11434",
                "ollama-1": "http://127.0.0.3:11434",
            }
        finally:
            await asyncio.to_thread(kube_cluster.start_apiserver)

        await pods.delete("ollama-0")
        await pods.add("ollama-2", ip="127.0.0.4")
        await rec.wait_names("ollama-1", "ollama-2", timeout=30)
    assert_never_empty_after_first(rec)
    assert_changes_only(rec)


async def test_several_namespaces_are_merged(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, kube_namespace: str, pods: Pods
) -> None:
    other = f"{kube_namespace}-b"
    await asyncio.to_thread(create_namespace, kube_api, other)
    await asyncio.to_thread(create_default_service_account, kube_api, other)
    try:
        other_pods = Pods(kube_api, other)
        await pods.add("a-0", ip="127.0.0.2")
        await other_pods.add("b-0", ip="127.0.0.3")
        discovery = make_discovery(kube_cluster, kube_namespace, other)
        async with running(discovery) as rec:
            await rec.wait_names("a-0", "b-0")
            await other_pods.ready("b-0", False)
            await rec.wait_names("a-0")
    finally:
        await asyncio.to_thread(delete_namespace, kube_api, other)


@pytest.fixture
async def unreachable_kubeconfig(kube_cluster: KubeCluster, tmp_path: Path) -> AsyncIterator[Path]:
    data = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    data["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(data))
    yield path


async def test_unreachable_apiserver_publishes_nothing(unreachable_kubeconfig: Path) -> None:
    discovery = KubernetesDiscovery(
        watching(("ai",), unreachable_kubeconfig),
        tuning=WatchTuning(backoff_initial=0.05, backoff_max=0.1),
    )
    async with running(discovery) as rec:
        async with asyncio.timeout(20):
            while "ai" not in discovery.stats or discovery.stats["ai"].errors < 3:
                await asyncio.sleep(0.05)
    assert rec.sets == []


async def test_cancel_during_a_long_watch_is_prompt(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    discovery = make_discovery(kube_cluster, kube_namespace, watch_timeout=600)
    await pods.add("ollama-0", ip="127.0.0.2")
    task = asyncio.create_task(discovery.run(Recorder()))
    async with asyncio.timeout(20):
        while (
            discovery.stats.get(kube_namespace) is None
            or not discovery.stats[kube_namespace].watches
        ):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the watch request is now waiting for events
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - started < 2.0
    assert discovery_threads() == []


async def test_cancel_just_after_the_apiserver_went_away(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    """Regression: a cancellation that lands right after the watch's stream broke must
    still cancel (not be swallowed by the error handling and backoff)."""
    discovery = make_discovery(kube_cluster, kube_namespace)
    await pods.add("ollama-0", ip="127.0.0.2")
    task = asyncio.create_task(discovery.run(Recorder()))
    try:
        async with asyncio.timeout(20):
            while (
                discovery.stats.get(kube_namespace) is None
                or not discovery.stats[kube_namespace].watches
            ):
                await asyncio.sleep(0.05)
        # Blocks the loop on purpose: the stream is broken before the task gets to run
        # again, and the cancellation lands on an already-failed call.
        kube_cluster.stop_apiserver()
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await asyncio.to_thread(kube_cluster.start_apiserver)
    assert discovery_threads() == []


async def test_watch_timeouts_resume_without_relisting(
    kube_cluster: KubeCluster, kube_namespace: str, pods: Pods
) -> None:
    discovery = make_discovery(kube_cluster, kube_namespace, watch_timeout=1)
    await pods.add("ollama-0", ip="127.0.0.2")
    async with running(discovery) as rec:
        await rec.wait_names("ollama-0")
        stats = discovery.stats[kube_namespace]
        async with asyncio.timeout(20):
            while stats.watches < 3:  # the server ended two watches; each resumed
                await asyncio.sleep(0.05)
        await pods.add("ollama-1", ip="127.0.0.3")
        await rec.wait_names("ollama-0", "ollama-1")
    assert (stats.lists, stats.expired) == (1, 0)


async def test_all_namespaces(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, kube_namespace: str, pods: Pods
) -> None:
    other = f"{kube_namespace}-all"
    await asyncio.to_thread(create_namespace, kube_api, other)
    await asyncio.to_thread(create_default_service_account, kube_api, other)
    labels = {"app": "ollama", "fleet": kube_namespace}  # only this test's pods
    try:
        await pods.add("a-0", ip="127.0.0.2", labels=labels)
        await Pods(kube_api, other).add("b-0", ip="127.0.0.3", labels=labels)
        discovery = KubernetesDiscovery(
            # the named namespace overlaps "*"
            watching(("*", kube_namespace), kube_cluster.kubeconfig, f"fleet={kube_namespace}")
        )
        async with running(discovery) as rec:
            await rec.wait_names("a-0", "b-0")
        assert all(len(s) == len({b.name for b in s}) for s in rec.sets)  # no duplicates
    finally:
        await asyncio.to_thread(delete_namespace, kube_api, other)
