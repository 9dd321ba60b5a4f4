"""Placement follows demand, end to end: the operator (in-process) on the real kube-apiserver
1.20, emulated Ollama pods, and two real balancer replicas whose ``/-/fleet`` demand the
operator sums.  Traffic goes through the balancers; nothing is faked.

Times are short (delays of seconds, resync 1 s, a demand poll every 0.2 s averaged over
1 s) and every wait is a poll of real state with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from modelpool_operator.demandfeed import DemandFeed
from modelpool_operator.kube import KubeAccess
from ollama_balancer.app import create_app, ops_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from ollama_wire.names import canonical
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster
from tests.harness.operator_env import Env, operator_settings, operator_thread

pytestmark = [pytest.mark.kube, pytest.mark.slow]

SEL = {"matchLabels": {"app": "ollama"}}
#: Emulated seconds run 20x faster: a 100-token answer takes ~0.1 s, a keep_alive of 40 s
#: (the release below) lasts 2 s.
TIME_SCALE = 0.05
RELEASE_KEEP_ALIVE = 40.0


@dataclass
class Rig:
    env: Env
    #: the balancers' client URLs (main port)
    balancers: list[str]
    settings: Any = None
    operator: Any = None  # the running operator_thread context
    stops: list[asyncio.Event] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def restart_operator(self) -> None:
        """Stop the operator and start a new one (a restart, or a standby taking over)."""
        await self.operator.__aexit__(None, None, None)
        self.operator = operator_thread(self.settings)
        await self.operator.__aenter__()

    def traffic(self, model: str, clients: int) -> asyncio.Event:
        """``clients`` loops sending generate requests for ``model``, spread over the balancer
        replicas, until the returned event is set."""
        stop = asyncio.Event()

        async def client_loop(url: str) -> None:
            while not stop.is_set():
                body = {
                    "model": model,
                    "prompt": "hello",
                    "stream": False,
                    "options": {"num_predict": 100},
                }
                async with self.env.session.post(f"{url}/api/generate", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        self.errors.append(f"{model}: {resp.status} {await resp.text()}")

        for i in range(clients):
            url = self.balancers[i % len(self.balancers)]
            self.tasks.append(asyncio.ensure_future(client_loop(url)))
        self.stops.append(stop)
        return stop

    async def quiet(self) -> None:
        for stop in self.stops:
            stop.set()
        await asyncio.gather(*self.tasks)
        self.tasks.clear()

    async def generate(self, model: str) -> dict[str, Any]:
        body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 5}}
        async with self.env.session.post(f"{self.balancers[0]}/api/generate", json=body) as r:
            assert r.status == 200, await r.text()
            doc: dict[str, Any] = await r.json()
            return doc

    async def listed(self) -> set[str]:
        """Models every balancer replica lists (its last poll of the pods' /api/tags)."""
        names: set[str] | None = None
        for url in self.balancers:
            async with self.env.session.get(f"{url}/api/tags") as resp:
                found = {m["name"] for m in (await resp.json())["models"]}
            names = found if names is None else names & found
        return names or set()

    async def pinned(self, model: str) -> list[int]:
        """Nodes holding ``model`` pinned, as ``/api/ps`` says.  Like Ollama, the emulator
        moves ``expires_at`` only when a runner goes idle: a copy pinned while it serves
        non-stop traffic still shows its old deadline, so under traffic use :meth:`copies`."""
        return await self.env.resident(model)

    async def copies(self, pool: str, model: str) -> list[int]:
        """Nodes where ``pool`` holds a loaded copy of ``model`` (its ledger) that is in
        memory: what the operator placed, whatever ``expires_at`` says right now."""
        status = (await self.env.get_pool(pool)).get("status") or {}
        key = canonical(model)
        owned = {o["pod"] for o in status.get("owned") or () if o["model"] == key and o["loaded"]}
        resident = await self.resident_any(model)
        return sorted(i for i in resident if f"ollama-{i}" in owned)

    async def resident_any(self, model: str) -> list[int]:
        """Nodes with ``model`` in memory, pinned or not."""
        key, out = canonical(model), []
        for i in range(len(self.env.fleet.nodes)):
            if any(canonical(m["name"]) == key for m in await self.env.ollama(i).ps()):
                out.append(i)
        return out

    async def autoscale(self, pool: str, model: str) -> dict[str, Any]:
        return dict((await self.env.model_status(pool, model)).get("autoscale") or {})


@contextlib.asynccontextmanager
async def autoscaling_rig(
    cluster: KubeCluster,
    namespace: str,
    *,
    nodes: int = 3,
    vram: int = 24 * 2**30,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """Emulated pods, two balancer replicas (queueing, no shared state) and the operator
    following their summed demand."""
    api = cluster.api_client()
    config = FleetConfig(
        nodes=[
            NodeConfig(
                name=f"gpu-{i}", host=f"127.0.0.{i + 2}", context_length=4096, vram_bytes=vram
            )
            for i in range(nodes)
        ],
        time_scale=TIME_SCALE,
    )
    try:
        async with AsyncExitStack() as stack:
            fleet = await stack.enter_async_context(EmulatedFleet(config))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            balancer = BalancerSettings.build(
                host="127.0.0.1",
                port=0,
                # Each pod's VRAM, as kube discovery reads it from the pods' annotation.
                backends=tuple(f"gpu-{i}={n.url};vram={vram}" for i, n in enumerate(fleet.nodes)),
                queue=True,
                poll_interval=0.2,
            )
            urls, ops = [], []
            for i in range(2):
                app = create_app(balancer, rng=random.Random(i))
                runner, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1.0)
                stack.push_async_callback(runner.cleanup)
                ops_runner, ops_port = await serve(ops_app(app), "127.0.0.1", 0)
                stack.push_async_callback(ops_runner.cleanup)
                urls.append(f"http://127.0.0.1:{port}")
                ops.append(f"http://127.0.0.1:{ops_port}")
            values: dict[str, Any] = {
                "balancer_urls": tuple(ops),
                "demand_interval_seconds": 0.2,
                "demand_window_seconds": 1.0,
                "release_keep_alive_seconds": RELEASE_KEEP_ALIVE,
            }
            values.update(overrides)
            settings = operator_settings(namespace, cluster.kubeconfig, fleet, **values)
            rig = Rig(Env(cluster, api, namespace, fleet, session), urls, settings)
            rig.operator = operator_thread(settings)
            await rig.operator.__aenter__()
            try:
                yield rig
            finally:
                await rig.quiet()
                await rig.operator.__aexit__(None, None, None)
    finally:
        api.close()


def _body(doc: dict[str, Any]) -> Any:
    """A manifest as the client's typed parameters accept it (it serializes dicts as they
    are)."""
    return doc


async def _reasons(env: Env, pool: str) -> list[str]:
    return [r for _, r, _ in await env.events(pool)]


def autoscaled(name: str, lo: int, hi: int, target: float, delay: int) -> dict[str, Any]:
    """A ModelPool model that autoscales between ``lo`` and ``hi`` warm copies."""
    return {
        "name": name,
        "minReplicas": lo,
        "maxReplicas": hi,
        "targetRequests": target,
        "scaleDownDelaySeconds": delay,
    }


async def test_warm_copies_follow_demand_up_and_back_down(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    delay = 3
    async with autoscaling_rig(kube_cluster, kube_namespace) as rig:
        env = rig.env
        for i in range(3):
            await env.add_pod(f"ollama-{i}", i)
        model = autoscaled("llama3.2:1b", 1, 3, 2, delay)
        await env.apply_pool("hot", {"selector": SEL, "models": [model]})

        def pinned(n: int, copies: bool = False) -> Callable[[], Any]:
            async def probe() -> list[int] | None:
                if copies:
                    found = await rig.copies("hot", "llama3.2:1b")
                else:
                    found = await rig.pinned("llama3.2:1b")
                return found if len(found) == n else None

            return probe

        await eventually(pinned(1), "one warm copy at minReplicas")
        active = await eventually(
            lambda: env.condition("hot", "ScalingActive"),
            "ScalingActive",
            accept=lambda c: c.get("status") == "True",
        )
        assert active["reason"] == "DemandKnown"

        # Six clients over the two balancers: in flight + queued ~6, at 2 per copy -> 3.
        stop = rig.traffic("llama3.2:1b", 6)
        began = time.monotonic()
        copies = await eventually(pinned(3, copies=True), "three warm copies", timeout=40)
        up_after = time.monotonic() - began
        assert copies == [0, 1, 2]
        auto = await rig.autoscale("hot", "llama3.2:1b")
        assert auto["replicas"] == 3
        assert auto["reason"].startswith("scaled up"), auto
        status = (await env.get_pool("hot"))["status"]
        assert status["scaledReplicas"] in ("2/3", "3/3")
        assert float(status["demand"]) > 2
        assert "ScaledUp" in await _reasons(env, "hot")
        table = await asyncio.to_thread(env.kubectl, "get", "mp", "-o", "wide")
        print(f"\nscaled up after {up_after:.1f}s\n$ kubectl get mp -o wide\n{table}")
        header = table.splitlines()[0]
        assert header.split()[7:9] == ["SCALED", "DEMAND"]

        stop.set()
        await rig.quiet()
        assert not rig.errors, rig.errors[:3]
        quiet = time.monotonic()
        # Idle now, so /api/ps tells the pins: all three, before the delay takes two.
        assert sorted(await eventually(pinned(3), "three pinned", timeout=delay - 1)) == [0, 1, 2]
        await eventually(pinned(1), "back to minReplicas", timeout=40)
        down_after = time.monotonic() - quiet
        print(f"back to one copy {down_after:.1f}s after the traffic stopped")
        assert down_after >= delay  # never before the delay
        # (the unloads may finish before the status that ordered them is written)
        auto = await eventually(
            lambda: rig.autoscale("hot", "llama3.2:1b"),
            "status at one copy",
            accept=lambda a: a.get("replicas") == 1,
        )
        assert auto["reason"].startswith("scaled down 3→1"), auto
        assert "lastScaleDown" in auto and "lastScaleUp" in auto
        assert "ScaledDown" in await _reasons(env, "hot")
        ready = await eventually(
            lambda: env.condition("hot", "Ready"),
            "Ready at one copy",
            accept=lambda c: c.get("status") == "True",
        )
        assert ready["reason"] == "AllModelsReady"


async def test_the_decision_survives_an_operator_restart(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    """The decision's memory is in status: a new operator resumes the wait of a scale-down
    where the old one left it (same lowSince), and scales down on the original schedule."""
    delay = 8
    async with autoscaling_rig(kube_cluster, kube_namespace, nodes=2) as rig:
        env = rig.env
        for i in range(2):
            await env.add_pod(f"ollama-{i}", i)
        model = autoscaled("llama3.2:1b", 1, 2, 1, delay)
        await env.apply_pool("keep", {"selector": SEL, "models": [model]})
        stop = rig.traffic("llama3.2:1b", 3)
        await eventually(
            lambda: rig.copies("keep", "llama3.2:1b"), "two copies", accept=lambda c: len(c) == 2
        )
        stop.set()
        await rig.quiet()
        before = await eventually(
            lambda: rig.autoscale("keep", "llama3.2:1b"),
            "the scale-down's wait to start",
            accept=lambda a: "lowSince" in a,
        )
        await asyncio.sleep(3)  # a part of the delay passes before the restart
        await rig.restart_operator()
        restarted = time.time()
        done = await eventually(
            lambda: rig.autoscale("keep", "llama3.2:1b"),
            "the scale-down",
            accept=lambda a: a.get("replicas") == 1,
            timeout=3 * delay,
        )
        low = datetime.fromisoformat(before["lowSince"].replace("Z", "+00:00")).timestamp()
        down = datetime.fromisoformat(done["lastScaleDown"].replace("Z", "+00:00")).timestamp()
        print(
            f"scaled down {down - low:.1f}s after demand fell (delay {delay}s), "
            f"{down - restarted:.1f}s after the restart"
        )
        assert delay <= down - low < delay + 2
        # A new operator that had forgotten would have waited a whole delay from its start.
        assert down - restarted < delay - 1
        assert done["lastScaleUp"] == before["lastScaleUp"]


async def test_scale_to_zero_releases_then_cold_loads_and_pins_again(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    delay = 4
    async with autoscaling_rig(kube_cluster, kube_namespace, nodes=2) as rig:
        env = rig.env
        for i in range(2):
            await env.add_pod(f"ollama-{i}", i)
        model = autoscaled("gemma2:2b", 0, 2, 4, delay)
        await env.apply_pool("cold", {"selector": SEL, "models": [model]})
        # minReplicas 0 and no demand: pulled everywhere (pull: all), loaded nowhere, Ready.
        await eventually(
            lambda: env.condition("cold", "Ready"),
            "Ready with zero copies",
            accept=lambda c: c.get("status") == "True",
        )
        assert sorted(await env.installed("gemma2:2b")) == [0, 1]
        assert await rig.pinned("gemma2:2b") == []
        await eventually(
            rig.listed, "the balancers see it", accept=lambda names: "gemma2:2b" in names
        )

        async def one_copy() -> list[int] | None:
            found = await rig.copies("cold", "gemma2:2b")
            return found if len(found) == 1 else None

        async def one_pinned() -> list[int] | None:
            found = await rig.pinned("gemma2:2b")
            return found if len(found) == 1 else None

        stop = rig.traffic("gemma2:2b", 2)
        first = await eventually(one_copy, "a copy as demand arrives", timeout=30)
        stop.set()
        await rig.quiet()
        assert not rig.errors, rig.errors[:3]
        assert await eventually(one_pinned, "pinned", timeout=delay - 1) == first

        # After the delay the pin is released (a load with a finite keep_alive), and Ollama
        # unloads the copy once idle: nothing was unloaded under a request.
        async def gone() -> bool:
            return not await rig.resident_any("gemma2:2b")

        await eventually(gone, "unloaded when idle", timeout=40)
        reasons = await _reasons(env, "cold")
        assert "ScaledDown" in reasons and "Released" in reasons, reasons
        assert "Unloaded" not in reasons, reasons
        auto = await rig.autoscale("cold", "gemma2:2b")
        assert auto["replicas"] == 0 and auto["reason"].startswith("scaled down 1→0"), auto
        assert (await env.model_status("cold", "gemma2:2b"))["loaded"] == 0

        # The next request is a cold load the balancer handles.
        answer = await rig.generate("gemma2:2b")
        assert answer["done"] is True and answer["load_duration"] > 0

        # Demand returns: a copy is pinned again (where the cold load left one, if it is
        # still there).
        stop = rig.traffic("gemma2:2b", 2)
        again = await eventually(one_copy, "a copy again", timeout=30)
        stop.set()
        await rig.quiet()
        assert await eventually(one_pinned, "pinned again", timeout=delay - 1) == again
        print(f"first pinned on {first}, again on {again}")
        auto = await rig.autoscale("cold", "gemma2:2b")
        assert auto["reason"].startswith("scaled up 0→1"), auto


async def test_two_pools_competing_for_vram_never_thrash(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    """Three pods with room for one copy each, two pools wanting up to two copies of their
    model, demand swinging from one to the other: the hot model waits for the cold one's
    delay (InsufficientVRAM, the unmet demand said), nothing is evicted, and no copy is
    loaded or unloaded more than once per delay window."""
    delay = 3.0
    async with autoscaling_rig(kube_cluster, kube_namespace, vram=2 * 2**30) as rig:
        env = rig.env
        for i in range(3):
            await env.add_pod(f"ollama-{i}", i, vram="2Gi")
        for pool, name in (("alpha", "llama3.2:1b"), ("beta", "gemma2:2b")):
            model = autoscaled(name, 1, 2, 1, int(delay))
            await env.apply_pool(pool, {"selector": SEL, "models": [model]})
        for pool in ("alpha", "beta"):
            await eventually(
                functools.partial(env.condition, pool, "Ready"),
                f"{pool} Ready",
                accept=lambda c: c.get("status") == "True",
            )

        # Watch every copy load and unload (in /api/ps or not), every 0.1 s.
        transitions: list[tuple[float, int, str, str]] = []
        watching = asyncio.Event()

        async def in_memory() -> set[tuple[int, str]]:
            now: set[tuple[int, str]] = set()
            for model in ("llama3.2:1b", "gemma2:2b"):
                now |= {(i, model) for i in await rig.resident_any(model)}
            return now

        # Ready can come a moment before both pinned copies show in /api/ps: wait for them.
        baseline = await eventually(
            in_memory, "one copy of each in memory", accept=lambda b: len(b) == 2
        )
        assert len(baseline) == 2, baseline  # one copy of each, one pod free

        async def watch() -> None:
            before = baseline
            while not watching.is_set():
                now = await in_memory()
                t = time.monotonic()
                transitions.extend((t, i, m, "up") for i, m in now - before)
                transitions.extend((t, i, m, "down") for i, m in before - now)
                before = now
                await asyncio.sleep(0.1)

        watcher = asyncio.ensure_future(watch())

        async def copies(model: str, n: int) -> None:
            pool = "alpha" if model == "llama3.2:1b" else "beta"

            async def probe() -> bool:
                return len(await rig.copies(pool, model)) == n

            await eventually(probe, f"{n} copies of {model}", timeout=40)

        try:
            # Phase 1: alpha hot -> it takes the free pod.
            stop = rig.traffic("llama3.2:1b", 3)
            await copies("llama3.2:1b", 2)
            # Phase 2: beta hot, alpha idle: beta waits for alpha's delay, never evicts.
            stop.set()
            await rig.quiet()
            stop = rig.traffic("gemma2:2b", 3)

            async def beta() -> tuple[dict[str, Any], Any, Any, Any]:
                return (
                    await env.condition("beta", "Degraded"),
                    await rig.autoscale("beta", "gemma2:2b"),
                    await rig.copies("alpha", "llama3.2:1b"),
                    await rig.resident_any("gemma2:2b"),
                )

            cond, *_ = await eventually(
                beta,
                "beta short of VRAM while alpha holds its copies",
                accept=lambda c: c[0].get("reason") == "InsufficientVRAM",
            )
            assert "gemma2:2b: 1/2 replicas placed for a demand of" in cond["message"], cond
            assert "left unmet rather than evicting" in cond["message"]
            assert len(await rig.copies("alpha", "llama3.2:1b")) == 2  # nothing evicted
            await copies("gemma2:2b", 2)
            assert len(await rig.copies("alpha", "llama3.2:1b")) == 1
            # Phase 3: and back.
            stop.set()
            await rig.quiet()
            stop = rig.traffic("llama3.2:1b", 3)
            await copies("llama3.2:1b", 2)
            assert len(await rig.copies("beta", "gemma2:2b")) == 1
            stop.set()
            await rig.quiet()
            await asyncio.sleep(0.3)  # the watcher's last look
        finally:
            watching.set()
            await watcher
        assert not rig.errors, rig.errors[:3]

        print("copies loaded (up) and unloaded (down):")
        start = transitions[0][0] if transitions else 0.0
        for t, i, m, d in transitions:
            print(f"  {t - start:6.2f}s gpu-{i} {m} {d}")
        per_copy: dict[tuple[int, str], list[tuple[float, str]]] = {}
        for t, i, m, d in transitions:
            per_copy.setdefault((i, m), []).append((t, d))
        for copy, changes in per_copy.items():
            for kind in ("up", "down"):
                times = [t for t, d in changes if d == kind]
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert all(g >= delay - 0.5 for g in gaps), (copy, kind, changes)
        # Each phase moved exactly one copy: 1 up, then (1 down, 1 up) twice.
        ups = [x for x in transitions if x[3] == "up"]
        downs = [x for x in transitions if x[3] == "down"]
        assert (len(ups), len(downs)) == (3, 2), transitions
        assert (await env.condition("alpha", "Degraded")).get("status") != "True"


async def test_unreachable_balancer_holds_counts_and_says_so(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> None:
    """--balancer-service whose Endpoints point nowhere: demand unknown, the count holds,
    status and an Event say why; the operator does not crash."""
    core = client.CoreV1Api(kube_cluster.api_client())
    service = "balancer-ops"
    await asyncio.to_thread(
        core.create_namespaced_service,
        kube_namespace,
        _body({"metadata": {"name": service}, "spec": {"ports": [{"name": "ops", "port": 9090}]}}),
    )
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): nothing answers there (the API server refuses
    # loopback addresses in Endpoints).
    await asyncio.to_thread(
        core.create_namespaced_endpoints,
        kube_namespace,
        _body(
            {
                "metadata": {"name": service},
                "subsets": [
                    {"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "ops", "port": 9090}]}
                ],
            }
        ),
    )
    async with autoscaling_rig(
        kube_cluster,
        kube_namespace,
        nodes=2,
        balancer_urls=(),
        balancer_service=f"{kube_namespace}/{service}",
        ollama_timeout_seconds=0.5,
    ) as rig:
        env = rig.env
        for i in range(2):
            await env.add_pod(f"ollama-{i}", i)
        model = {"name": "llama3.2:1b", "minReplicas": 2, "maxReplicas": 2}
        await env.apply_pool("blind", {"selector": SEL, "models": [model]})
        cond = await eventually(
            lambda: env.condition("blind", "ScalingActive"),
            "ScalingActive False after the first poll",
            accept=lambda c: c.get("status") == "False" and "192.0.2.10" in c["message"],
        )
        assert cond["reason"] == "DemandUnknown"
        assert "http://192.0.2.10:9090" in cond["message"]  # read from the Endpoints
        assert "holding llama3.2:1b at 2" in cond["message"]
        # min 2 still places two copies; the pool is Ready: unknown demand is no failure.
        await eventually(
            lambda: env.condition("blind", "Ready"),
            "Ready",
            accept=lambda c: c.get("status") == "True",
        )
        status = (await env.get_pool("blind"))["status"]
        assert status["demand"] == "unknown"
        auto = await rig.autoscale("blind", "llama3.2:1b")
        assert "demand unknown" in auto["message"] and "demand" not in auto
        assert "DemandUnknown" in await _reasons(env, "blind")
    core.api_client.close()


async def test_feed_reads_the_service_endpoints(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """The feed lists the balancer Service's ready endpoints through the API each poll."""
    core = client.CoreV1Api(kube_cluster.api_client())
    await asyncio.to_thread(
        core.create_namespaced_endpoints,
        kube_namespace,
        _body(
            {
                "metadata": {"name": "bal"},
                "subsets": [
                    {
                        "addresses": [{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}],
                        "notReadyAddresses": [{"ip": "192.0.2.3"}],
                        "ports": [{"name": "http", "port": 11434}, {"name": "ops", "port": 9090}],
                    }
                ],
            }
        ),
    )
    kube = KubeAccess(str(kube_cluster.kubeconfig), None)
    try:
        async with aiohttp.ClientSession() as session:
            feed = DemandFeed(session, service=(kube_namespace, "bal"), kube=kube)
            assert await feed.targets() == ["http://192.0.2.1:9090", "http://192.0.2.2:9090"]
            missing = DemandFeed(session, service=(kube_namespace, "nope"), kube=kube)
            reading = await missing.poll()
            assert not reading.known and "404" in reading.error
    finally:
        kube.close()
        core.api_client.close()
