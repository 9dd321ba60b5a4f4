"""kopf peering: which mode the operator picks, and two real operators sharing one pool.

The end-to-end test runs both operators as ``python -m ollama_fleet operator`` processes
(as a Deployment's replicas would run) against the real kube-apiserver, with kopf's peering
CRDs from ``manifests/crds/kopf-peering.yaml``.  Which replica did the work is read from the
Events' ``reportingInstance`` (the operator's ``--identity``), not from logs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelpool_operator.handlers import Peering, choose_peering
from modelpool_operator.settings import RANDOM_PRIORITY_MAX, OperatorSettings
from ollama_emulator import EmulatedFleet
from tests.kube.cluster import KubeCluster, as_json
from tests.operator.test_e2e import (  # noqa: F401 (modelpool_crd: a fixture)
    Env,
    _install_crd,
    _service_account_kubeconfig,
    eventually,
    modelpool_crd,
    three_gpu_fleet,
    until,
)

PEERING_CRD = Path(__file__).parents[2] / "manifests" / "crds" / "kopf-peering.yaml"
RBAC_YAML = Path(__file__).parents[2] / "operator" / "modelpool_operator" / "rbac.yaml"
PEERING = "ollama-fleet"


# ------------------------------------------------------------------ mode selection (pure)


def _exists(present: set[str | None]) -> Any:
    def exists(namespace: str | None, name: str) -> bool:
        assert name == PEERING
        return namespace in present

    return exists


def _settings(**kw: Any) -> OperatorSettings:
    return OperatorSettings.from_sources(kw, {})


def test_default_peers_when_the_object_exists_else_standalone() -> None:
    s = _settings(namespaces=("a", "b"))
    assert choose_peering(s, _exists({"a", "b"})).name == PEERING
    alone = choose_peering(s, _exists(set()))
    assert alone.name is None and "one replica" in alone.why
    with pytest.raises(ValueError, match="missing in b"):
        choose_peering(s, _exists({"a"}))  # neither peering nor standalone is safe


def test_all_namespaces_uses_the_cluster_object() -> None:
    s = _settings(all_namespaces=True)
    assert choose_peering(s, _exists({None})).name == PEERING
    assert choose_peering(s, _exists({"default"})).name is None


def test_explicit_choices_skip_the_lookup() -> None:
    def never(namespace: str | None, name: str) -> bool:
        raise AssertionError("looked up")

    assert choose_peering(_settings(standalone=True), never) == Peering(None, "--standalone")
    assert choose_peering(_settings(peering="mine"), never).name == "mine"  # mandatory
    assert choose_peering(_settings(namespaces=("ml-*",)), never).name == PEERING
    with pytest.raises(ValueError, match="exclusive"):
        _settings(standalone=True, peering="mine")


def test_priority_and_identity_settings() -> None:
    env = {"OLLAMA_FLEET_OPERATOR_PRIORITY": "random"}
    drawn = {OperatorSettings.from_sources({}, env).priority for _ in range(20)}
    assert all(1 <= p <= RANDOM_PRIORITY_MAX for p in drawn) and len(drawn) > 1
    assert _settings(priority="7").priority == 7
    assert OperatorSettings.from_sources({}, {}).priority == 0
    with pytest.raises(ValueError, match="integer or 'random'"):
        _settings(priority="high")
    assert _settings(identity="op-a").own_identity == "op-a"
    assert str(os.getpid()) in _settings().own_identity


# ------------------------------------------------------------ two operators, one pool (kube)


def _install_peering_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    names = []
    for body in (d for d in yaml.safe_load_all(PEERING_CRD.read_text()) if d):
        names.append(body["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as e:
            if e.status != 409:
                raise
    deadline = time.monotonic() + 20
    for name in names:
        while True:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                break
            assert time.monotonic() < deadline, f"{name} not established"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def peering_crds(kube_cluster: KubeCluster) -> None:
    with kube_cluster.client() as api:
        _install_peering_crds(api)


class OperatorProcess:
    """``ollama-fleet operator`` as a child process, its log in a file."""

    def __init__(
        self,
        cluster: KubeCluster,
        namespace: str,
        identity: str,
        priority: int,
        kubeconfig: Path | None = None,
    ):
        self.identity = identity
        self.log_path = cluster.dir / f"operator-{namespace}-{identity}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_FLEET_OPERATOR_")}
        argv = [
            sys.executable, "-m", "ollama_fleet", "operator",
            "-n", namespace, "--kubeconfig", str(kubeconfig or cluster.kubeconfig),
            "--identity", identity, "--priority", str(priority),
            "--resync-seconds", "1", "--backoff-seconds", "0.1", "--attempts", "2",
            "--ollama-timeout-seconds", "1",
        ]  # fmt: skip
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as Kubernetes stops a pod: kopf leaves the peering on its way out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only our own child, by its handle
            self.proc.wait(5)
            raise


@pytest.fixture
async def peered_env(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    modelpool_crd: None,  # noqa: F811 (the fixture imported from test_e2e)
    peering_crds: None,
) -> AsyncIterator[Env]:
    config = three_gpu_fleet()
    api = kube_cluster.api_client()
    co = client.CustomObjectsApi(api)
    await asyncio.to_thread(
        co.create_namespaced_custom_object,
        "kopf.dev", "v1", kube_namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )  # fmt: skip
    try:
        async with EmulatedFleet(config) as fleet, aiohttp.ClientSession() as session:
            yield Env(kube_cluster, api, kube_namespace, fleet, session)
    finally:
        api.close()


@contextlib.contextmanager
def operators(*procs: OperatorProcess) -> Iterator[None]:
    """Stop every still-running operator at the end; print their logs when a test fails."""
    try:
        yield
    except BaseException:
        for p in procs:
            print(f"--- operator {p.identity} ---\n{p.log[-6000:]}")
        raise
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.stop()


async def _peers(env: Env) -> dict[str, Any]:
    """The live peers in the KopfPeering's status (kopf's keep-alives; lifetime 0 = leaving)."""
    obj = as_json(await env.k(
        env.co.get_namespaced_custom_object, "kopf.dev", "v1", env.namespace, "kopfpeerings",
        PEERING,
    ))  # fmt: skip
    return {k: v for k, v in (obj.get("status") or {}).items() if v and v.get("lifetime")}


async def _events_by(env: Env, pool: str) -> dict[str, tuple[str, str]]:
    """The pool's Events by name: (reportingInstance, reason)."""
    core = client.CoreV1Api(env.api)
    evs = await env.k(
        core.list_namespaced_event, env.namespace, field_selector=f"involvedObject.name={pool}"
    )
    return {str(e.metadata.name): (e.reporting_instance or "", e.reason or "") for e in evs.items}


def _since(now: dict[str, tuple[str, str]], before: dict[str, Any]) -> list[tuple[str, str]]:
    return [v for k, v in now.items() if k not in before]


def _spec(replicas: int) -> dict[str, Any]:
    return {
        "selector": {"matchLabels": {"app": "ollama"}},
        "models": [{"name": "llama3.2:1b", "replicas": replicas}],
    }


async def _loaded_on(env: Env, n: int) -> list[int] | None:
    nodes = await env.resident("llama3.2:1b")
    return nodes if len(nodes) == n else None


@pytest.mark.kube
@pytest.mark.slow
async def test_only_the_highest_priority_operator_acts_and_a_standby_takes_over(
    peered_env: Env,
) -> None:
    env = peered_env
    for i in range(3):
        await env.add_pod(f"ollama-{i}", i)
    low = OperatorProcess(env.cluster, env.namespace, "op-low", priority=100)
    high: OperatorProcess | None = None
    with operators(low):
        # 1. Alone, the low-priority operator acts: it loads the pool's one replica.
        await until(lambda: _peers(env), lambda p: "op-low" in p, "op-low's keep-alive")
        await env.apply_pool("chat", _spec(1))
        await eventually(lambda: _loaded_on(env, 1), "one replica, by op-low")
        assert ("op-low", "Loaded") in (await _events_by(env, "chat")).values()

        # 2. A higher-priority operator joins: op-low pauses, op-high does the next change.
        high = OperatorProcess(env.cluster, env.namespace, "op-high", priority=200)
        with operators(high):
            await until(lambda: _peers(env), lambda p: "op-high" in p, "op-high's keep-alive")
            await until(
                lambda: asyncio.sleep(0, low.log),
                lambda log: "Pausing operations in favour of" in log,
                "op-low to pause",
            )
            assert "op-high" in low.log  # in favour of whom
            before = await _events_by(env, "chat")
            await env.apply_pool("chat", _spec(2))
            await eventually(lambda: _loaded_on(env, 2), "two replicas, by op-high")
            await until(
                lambda: _events_by(env, "chat"),
                lambda evs: ("op-high", "Loaded") in _since(evs, before),
                "op-high's Loaded event",
            )
            new = _since(await _events_by(env, "chat"), before)
            assert {who for who, _ in new} == {"op-high"}, new  # op-low did nothing
            assert "Pausing operations" not in high.log

            # 3. op-high stops (SIGTERM, as on a rollout): it leaves the peering at once ...
            resumed = low.log.count("Resuming operations after the pause")  # 1: its start-up
            assert await asyncio.to_thread(high.stop) == 0
        await until(lambda: _peers(env), lambda p: "op-high" not in p, "op-high to leave")
        # ... and op-low resumes and reconciles the change made after.
        await until(
            lambda: asyncio.sleep(0, low.log),
            lambda log: log.count("Resuming operations after the pause") > resumed,
            "op-low to resume",
        )
        mark = await _events_by(env, "chat")
        await env.apply_pool("chat", _spec(3))
        await eventually(lambda: _loaded_on(env, 3), "three replicas, by op-low")
        await until(
            lambda: _events_by(env, "chat"),
            lambda evs: ("op-low", "Loaded") in _since(evs, mark),
            "op-low's Loaded event after the takeover",
        )
        assert {who for who, _ in _since(await _events_by(env, "chat"), mark)} == {"op-low"}
        assert await asyncio.to_thread(low.stop) == 0
    assert "peering: ollama-fleet, priority 100, identity op-low" in low.log


@pytest.mark.kube
@pytest.mark.slow
async def test_rbac_yaml_is_enough_for_peering(
    kube_cluster_with_controllers: KubeCluster, tmp_path: Path
) -> None:
    """As the ServiceAccount of rbac.yaml: the look-up, the peers' watch, the keep-alive."""
    cluster = kube_cluster_with_controllers
    namespace = f"rbac-peering-{os.getpid()}"
    with cluster.client() as api:
        _install_crd(api)
        _install_peering_crds(api)
    kubeconfig = await asyncio.to_thread(
        _service_account_kubeconfig, cluster, namespace, tmp_path / "kubeconfig"
    )
    with cluster.client() as api:
        (peering,) = [
            d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d["kind"] == "KopfPeering"
        ]
        peering["metadata"]["namespace"] = namespace
        co = client.CustomObjectsApi(api)
        co.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", peering)

        async def peers() -> dict[str, Any]:
            obj = as_json(await asyncio.to_thread(
                co.get_namespaced_custom_object, "kopf.dev", "v1", namespace, "kopfpeerings",
                PEERING,
            ))  # fmt: skip
            return {k: v for k, v in (obj.get("status") or {}).items() if v}

        op = OperatorProcess(cluster, namespace, "op-sa", priority=1, kubeconfig=kubeconfig)
        with operators(op):
            await until(peers, lambda p: "op-sa" in p, "op-sa's keep-alive (patch)")
            await until(
                lambda: asyncio.sleep(0, op.log),
                lambda log: "Resuming operations after the pause" in log,  # list/watch
                "op-sa to see the peers",
            )
            assert await asyncio.to_thread(op.stop) == 0
            await until(peers, lambda p: "op-sa" not in p, "op-sa to leave the peering")
        assert "peering object ollama-fleet found" in op.log  # get
        assert "Forbidden" not in op.log and "403" not in op.log, op.log
