"""Issue 14: the operator under real timing, on the real API server with emulated pods.

Where timing is the point the emulated fleet runs at real speed (``time_scale=1``):
downloads at a fixed bandwidth, loads taking their ``load_seconds``.  Models are
small and bandwidths chosen so every test stays well under a minute.  Times are
measured by polling the emulator's in-process state (no HTTP in between) and the
API server.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ollama_emulator import EmulatedFleet, FleetConfig, ModelSpec, NodeConfig, default_catalogue
from ollama_emulator.registry import layers
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster
from tests.harness.operator_env import Env, pool_condition, running_operator

pytestmark = [pytest.mark.kube, pytest.mark.slow]

SEL = {"matchLabels": {"app": "ollama"}}
GB = 10**9

#: Round numbers, so the expected durations are obvious at time_scale 1.
BIG = ModelSpec(name="big:8b", size_bytes=8 * GB, load_seconds=5, context_length=8192)
WARM = ModelSpec(name="warm:1b", size_bytes=1 * GB, load_seconds=1, context_length=8192)
HUGE = ModelSpec(name="huge:70b", size_bytes=42 * GB, load_seconds=60, context_length=8192)
BIG2 = ModelSpec(name="other:8b", size_bytes=8 * GB, load_seconds=5, context_length=8192)
CATALOGUE = default_catalogue().with_specs([BIG, WARM, HUGE, BIG2])


def fleet_config(
    n: int = 2,
    *,
    time_scale: float = 1.0,
    bandwidth: float = 200e6,
    installed: tuple[str, ...] = (),
) -> FleetConfig:
    return FleetConfig(
        nodes=[
            NodeConfig(
                name=f"gpu-{i}",
                host=f"127.0.0.{i + 2}",
                context_length=4096,
                pull_bandwidth=bandwidth,
                installed=installed,
            )
            for i in range(n)
        ],
        catalogue=CATALOGUE,
        time_scale=time_scale,
    )


async def add_pods(env: Env, n: int, vram: str = "24Gi") -> None:
    for i in range(n):
        await env.add_pod(f"ollama-{i}", i, vram=vram)


def installed(fleet: EmulatedFleet, i: int, model: str) -> bool:
    return fleet.nodes[i].library.find(model) is not None


def resident(fleet: EmulatedFleet, i: int, model: str) -> bool:
    spec = CATALOGUE[model]
    return fleet.nodes[i].scheduler.runner_for(spec) is not None


def downloading(fleet: EmulatedFleet, i: int, model: str) -> bool:
    digest = layers(CATALOGUE[model])[0][0]
    return digest in fleet.nodes[i].puller._downloads


async def events(env: Env, pool: str) -> list[client.CoreV1Event]:
    core = client.CoreV1Api(env.api)
    evs = await env.k(
        core.list_namespaced_event, env.namespace, field_selector=f"involvedObject.name={pool}"
    )
    return list(evs.items)


@dataclass
class Stopwatch:
    """When each watched fact first became true (polled every 20 ms, in-process)."""

    facts: dict[str, Callable[[], bool]]
    seen: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def start(self) -> Stopwatch:
        async def poll() -> None:
            while True:
                for name, fact in self.facts.items():
                    if name not in self.seen and fact():
                        self.seen[name] = time.monotonic()
                await asyncio.sleep(0.02)

        self.task = asyncio.ensure_future(poll())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def test_one_pools_big_download_does_not_hold_back_another_pools_scale_up(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    """Two pools on the same pods; one pulls 8 GB at 200 MB/s (40 s).  The other pool's
    replicas 1 -> 2 is loaded within a few seconds, while that download still runs."""
    config = fleet_config(installed=("warm:1b",))
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, resync_seconds=30.0
    ) as env:
        await add_pods(env, 2)
        await env.apply_pool("big", {"selector": SEL, "models": [{"name": "big:8b"}]})
        await env.apply_pool("chat", {"selector": SEL, "models": [{"name": "warm:1b"}]})
        await eventually(
            lambda: env.get_pool("chat"),
            "chat Ready",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            timeout=20,
        )
        await eventually(
            lambda: asyncio.sleep(0, any(downloading(env.fleet, i, "big:8b") for i in (0, 1))),
            "big:8b downloading",
        )
        start = time.monotonic()
        await env.apply_pool(
            "chat", {"selector": SEL, "models": [{"name": "warm:1b", "replicas": 2}]}
        )
        await eventually(
            lambda: asyncio.sleep(0, all(resident(env.fleet, i, "warm:1b") for i in (0, 1))),
            "the second warm:1b replica",
            timeout=20,
        )
        took = time.monotonic() - start
        print(f"\nscale-up 1 -> 2 took {took:.1f}s while big:8b downloads")
        assert took < 5.0  # a 1 s load, not the 40 s download
        assert any(downloading(env.fleet, i, "big:8b") for i in (0, 1))  # still running
        assert not any(installed(env.fleet, i, "big:8b") for i in (0, 1))
        pool = await env.get_pool("big")
        cond = pool_condition(pool, "Reconciling")
        assert (cond["status"], cond["reason"]) == ("True", "Pulling")
        assert "big:8b" in cond["message"] and "% of" in cond["message"]


@pytest.mark.parametrize("lookup", [True, False], ids=["manifest lookup", "pull fails"])
async def test_an_unknown_model_does_not_delay_the_others(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None, lookup: bool
) -> None:
    """A pool lists a model the registry does not have next to one it has.  The good
    model is loaded the moment its pull lands on each pod (its load takes 1 s)."""
    config = fleet_config(bandwidth=1e9)  # 1 GB: a 1 s download
    async with running_operator(
        kube_cluster,
        kube_namespace,
        kube_cluster.kubeconfig,
        config,
        resync_seconds=30.0,
        manifest_lookup=lookup,
    ) as env:
        await add_pods(env, 2)
        facts: dict[str, Callable[[], bool]] = {}
        for i in (0, 1):
            facts[f"installed {i}"] = functools.partial(installed, env.fleet, i, "warm:1b")
            facts[f"resident {i}"] = functools.partial(resident, env.fleet, i, "warm:1b")
        watch = Stopwatch(facts).start()
        applied = time.monotonic()
        await env.apply_pool(
            "mixed",
            {
                "selector": SEL,
                "models": [
                    {"name": "no-such-model:7b"},
                    {"name": "warm:1b", "replicas": 2},
                ],
            },
        )
        try:
            await eventually(
                lambda: asyncio.sleep(0, len(watch.seen) == 4), "warm:1b on both", timeout=20
            )
        finally:
            await watch.stop()
        for i in (0, 1):
            gap = watch.seen[f"resident {i}"] - watch.seen[f"installed {i}"]
            print(f"\npod {i}: pulled after {watch.seen[f'installed {i}'] - applied:.1f}s, "
                  f"loaded {gap:.1f}s later")  # fmt: skip
            assert gap < 1.0 + 1.5  # the 1 s load itself, started at once
        cond = await eventually(
            lambda: env.condition("mixed", "Degraded"),
            "ModelNotFound",
            accept=lambda c: c.get("reason") == "ModelNotFound",
        )
        assert "no-such-model:7b" in cond["message"] and "check the name" in cond["message"]
        pulls = sum(n.stats.requests["/api/pull"] for n in env.fleet.nodes)
        # warm:1b on two pods; without the lookup also one failed attempt per pod (pull:
        # all) at the unknown one, never retried
        assert pulls == (2 if lookup else 4)


async def test_status_shows_progress_within_two_seconds(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    config = fleet_config(n=1)
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, resync_seconds=30.0
    ) as env:
        await add_pods(env, 1)
        await asyncio.sleep(0.5)  # the pod reached the operator's index
        start = time.monotonic()
        await env.apply_pool("slow", {"selector": SEL, "models": [{"name": "big:8b"}]})

        async def row() -> list[str]:
            out = await asyncio.to_thread(env.kubectl, "get", "mp", "slow", "--no-headers")
            return out.split()

        cols = await eventually(
            row, "Reconciling True", accept=lambda r: len(r) > 4 and r[4] == "True", timeout=10
        )
        took = time.monotonic() - start
        print(f"\n`kubectl get mp` showed Reconciling after {took:.1f}s: {' '.join(cols)}")
        assert took < 2.0
        pool = await env.get_pool("slow")
        assert pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
        # ... and the download's progress moves while it runs.
        first = await eventually(
            lambda: env.condition("slow", "Reconciling"),
            "pull progress in the Reconciling message",
            accept=lambda c: "% of 7.5 GiB" in c.get("message", ""),
        )

        def percent(c: dict[str, Any]) -> int:
            found = re.search(r"(\d+)% of", c.get("message", ""))
            return int(found.group(1)) if found else -1

        later = await eventually(
            lambda: env.condition("slow", "Reconciling"),
            "progress to move",
            accept=lambda c: percent(c) > percent(first),
        )
        assert later["reason"] == "Pulling"


async def test_deleting_a_pool_without_prune_never_waits_for_the_operator(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    config = fleet_config(n=1, time_scale=0.01)
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config
    ) as env:
        await add_pods(env, 1)
        keep = {"selector": SEL, "models": [{"name": "warm:1b"}]}
        await env.apply_pool("keep", keep)
        await env.apply_pool("tidy", {**keep, "prune": True})
        for name in ("keep", "tidy"):
            await eventually(
                functools.partial(env.get_pool, name),
                f"{name} Ready",
                accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            )
        assert "finalizers" not in (await env.get_pool("keep"))["metadata"]
        tidy = await env.get_pool("tidy")
        assert tidy["metadata"]["finalizers"] == ["ollamafleet.io/finalizer"]
        # Turning prune off drops the finalizer; on again adds it.
        await env.apply_pool("tidy", {**keep, "prune": False})
        await eventually(
            lambda: env.get_pool("tidy"),
            "the finalizer to go with prune: false",
            accept=lambda p: not p["metadata"].get("finalizers"),
        )
    # The operator is stopped now.
    api = kube_cluster.api_client()
    co = client.CustomObjectsApi(api)
    for name in ("keep", "tidy"):
        await asyncio.to_thread(
            co.delete_namespaced_custom_object,
            "ollamafleet.io", "v1alpha1", kube_namespace, "modelpools", name,
        )  # fmt: skip

    async def gone() -> bool:
        for name in ("keep", "tidy"):
            try:
                await asyncio.to_thread(
                    co.get_namespaced_custom_object,
                    "ollamafleet.io", "v1alpha1", kube_namespace, "modelpools", name,
                )  # fmt: skip
                return False
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    try:
        await eventually(gone, "both pools deleted with the operator down", timeout=5)
    finally:
        api.close()


@pytest.mark.parametrize(
    ("pull", "lookup"),
    [("all", True), ("loaded", True), ("loaded", False)],
    ids=["pull all", "pull loaded", "pull loaded, size from the pull"],
)
async def test_a_model_larger_than_every_pod_is_refused_before_its_download(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None, pull: str, lookup: bool
) -> None:
    config = fleet_config(time_scale=0.01, bandwidth=1e9)
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, manifest_lookup=lookup
    ) as env:
        await add_pods(env, 2)
        await env.apply_pool(
            "huge", {"selector": SEL, "models": [{"name": "huge:70b", "pull": pull}]}
        )
        cond = await eventually(
            lambda: env.condition("huge", "Degraded"),
            "ModelTooLarge",
            accept=lambda c: c.get("reason") == "ModelTooLarge",
        )
        print("\n" + cond["message"])
        assert "huge:70b" in cond["message"] and "largest: ollama-" in cond["message"]
        await asyncio.sleep(1.5)  # a few resyncs: still nothing downloaded
        weights = layers(HUGE)[0][0]
        downloaded = sum(n.puller.blobs.get(weights, 0) for n in env.fleet.nodes)
        pulls = sum(n.stats.requests["/api/pull"] for n in env.fleet.nodes)
        if lookup:
            assert (pulls, downloaded) == (0, 0)
        else:
            # Without the registry's manifest the pull's first progress lines tell the size:
            # one pull, abandoned at once.
            assert pulls == 1
            assert downloaded < 0.01 * HUGE.size_bytes
        assert not any(installed(env.fleet, i, "huge:70b") for i in (0, 1))


async def test_an_unknown_model_is_one_event_whose_count_rises(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    config = fleet_config(n=1, time_scale=0.01)
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, manifest_lookup=False
    ) as env:
        await add_pods(env, 1)
        await env.apply_pool("typo", {"selector": SEL, "models": [{"name": "llama3.9:8b"}]})

        async def not_found() -> list[client.CoreV1Event]:
            return [e for e in await events(env, "typo") if e.reason == "ModelNotFound"]

        evs = await eventually(
            not_found, "count 3", accept=lambda e: bool(e) and (e[0].count or 0) >= 3
        )
        assert len(evs) == 1, [(e.metadata.name, e.count) for e in evs]
        assert evs[0].type == "Warning" and "llama3.9:8b" in (evs[0].message or "")
        first, last = evs[0].first_timestamp, evs[0].last_timestamp
        assert first is not None and last is not None and last > first
        # One attempt, one failure event: not retried on every resync.
        assert env.fleet.nodes[0].stats.requests["/api/pull"] == 1
        failed = [e for e in await events(env, "typo") if e.reason == "PullFailed"]
        assert len(failed) == 1 and failed[0].count == 1
        # A spec change is a new chance (the tag was fixed).
        await env.apply_pool("typo", {"selector": SEL, "models": [{"name": "warm:1b"}]})
        await eventually(
            lambda: env.get_pool("typo"),
            "Ready after the fix",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
        )


async def test_a_client_reload_with_another_num_ctx_is_seen_and_repinned(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    config = fleet_config(n=1, installed=("warm:1b",))
    async with running_operator(
        kube_cluster,
        kube_namespace,
        kube_cluster.kubeconfig,
        config,
        resync_seconds=60.0,  # only the pin check between resyncs can notice
        pin_check_seconds=2.0,
    ) as env:
        await add_pods(env, 1)
        spec = {"selector": SEL, "models": [{"name": "warm:1b", "options": {"num_ctx": 4096}}]}
        await env.apply_pool("pinned", spec)
        await eventually(
            lambda: env.get_pool("pinned"),
            "Ready",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            timeout=20,
        )
        # A client sends another num_ctx and no keep_alive: Ollama reloads the model with
        # that context and the default keep_alive (docs/ollama.md §2.5, §4).
        body = {"model": "warm:1b", "prompt": "hi", "stream": False, "options": {"num_ctx": 2048}}
        async with env.session.post(env.fleet.nodes[0].url + "/api/generate", json=body) as r:
            assert r.status == 200, await r.text()
        reloaded = time.monotonic()
        [runner] = env.fleet.nodes[0].scheduler.runners.values()
        assert runner.num_ctx == 2048

        ready = await eventually(
            lambda: env.condition("pinned", "Ready"),
            "the drift in status",
            accept=lambda c: c.get("status") == "False" and "num_ctx 2048" in c.get("message", ""),
            timeout=10,
        )
        seen = time.monotonic() - reloaded
        print(f"\ndrift in status after {seen:.1f}s: {ready['message']}")
        assert seen < 5.0
        await eventually(
            lambda: env.get_pool("pinned"),
            "re-pinned and Ready",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            timeout=15,
        )
        [runner] = env.fleet.nodes[0].scheduler.runners.values()
        assert runner.num_ctx == 4096 and runner.keep_alive == float("inf")
        loaded = [e.message or "" for e in await events(env, "pinned") if e.reason == "Loaded"]
        assert any("reload: num_ctx differs" in m for m in loaded), loaded


async def test_a_transient_failure_is_retried_after_a_pause_not_at_the_next_resync(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    config = fleet_config(n=1, time_scale=0.01, bandwidth=1e9)
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, resync_seconds=60.0
    ) as env:
        await add_pods(env, 1)
        # Both attempts of the first pull fail (the operator tries twice here).
        env.fleet.nodes[0].faults.fail_next(
            2, status=500, message="disk hiccup", paths=("/api/pull",)
        )
        start = time.monotonic()
        await env.apply_pool(
            "flaky", {"selector": SEL, "models": [{"name": "warm:1b", "pull": "loaded"}]}
        )
        cond = await eventually(
            lambda: env.condition("flaky", "Degraded"),
            "the failure in status",
            accept=lambda c: c.get("reason") == "ActionFailed",
        )
        assert "disk hiccup" in cond["message"]
        await eventually(
            lambda: env.get_pool("flaky"),
            "Ready after the retry",
            accept=lambda p: pool_condition(p, "Ready").get("status") == "True",
            timeout=20,
        )
        took = time.monotonic() - start
        print(f"\nReady {took:.1f}s after a failed pull (resync is 60 s)")
        assert took < 15.0
        reasons = [e.reason for e in await events(env, "flaky")]
        assert reasons.count("PullFailed") == 1 and "LoadFailed" not in reasons  # the cause only
        assert (await env.condition("flaky", "Degraded"))["status"] == "False"


async def test_a_spec_change_drops_queued_work_and_plans_again(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    """One pull at a time on the pod: the second model's pull waits in the queue.  The spec
    drops that model for another: the queued pull never starts, the new model loads."""
    config = fleet_config(n=1, installed=("warm:1b",))
    async with running_operator(
        kube_cluster, kube_namespace, kube_cluster.kubeconfig, config, pulls_per_pod=1
    ) as env:
        await add_pods(env, 1)
        two = [{"name": "big:8b", "pull": "loaded"}, {"name": "other:8b", "pull": "loaded"}]
        await env.apply_pool("queue", {"selector": SEL, "models": two})
        await eventually(
            lambda: env.condition("queue", "Reconciling"),
            "the second pull queued",
            accept=lambda c: "pull other:8b" in c.get("message", "") and "queued" in c["message"],
        )
        await env.apply_pool("queue", {"selector": SEL, "models": [two[0], {"name": "warm:1b"}]})
        await eventually(
            lambda: asyncio.sleep(0, resident(env.fleet, 0, "warm:1b")), "warm:1b loaded"
        )
        await asyncio.sleep(0.5)
        assert not downloading(env.fleet, 0, "other:8b")
        assert layers(BIG2)[0][0] not in env.fleet.nodes[0].puller.blobs  # never started
        assert downloading(env.fleet, 0, "big:8b")  # the wanted download went on
        cond = await env.condition("queue", "Reconciling")
        assert "other:8b" not in cond["message"]
