"""Leader election on a coordination.k8s.io/v1 Lease: the decisions, and real replicas.

The end-to-end tests run the operator as ``python -m ollama_fleet operator`` processes
(as a Deployment's replicas run) against the real kube-apiserver 1.20.  Which replica
did the work is read from the Events' ``reportingInstance`` (the operator's
``--identity``) and from the Lease's ``holderIdentity``.
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
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelpool_operator.lease import LeaseRecord, lease_spec, may_acquire, record_of
from modelpool_operator.settings import DEFAULT_LEASE, OperatorSettings
from ollama_emulator import EmulatedFleet
from tests.harness.eventually import eventually
from tests.harness.kube import KubeCluster
from tests.harness.operator_env import Env, three_gpu_fleet

NOW = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


# ------------------------------------------------------------------------ decisions (pure)


def rec(holder: str, duration: int = 10, renew: str = "t1", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, duration, renew, transitions, acquire_time="t0")


@pytest.mark.parametrize(
    ("record", "unchanged_for", "expected"),
    [
        pytest.param(None, 0.0, True, id="no lease yet: create it"),
        pytest.param(rec(""), 0.0, True, id="handed back: take it at once"),
        pytest.param(rec("me"), 0.0, True, id="mine: renew"),
        pytest.param(rec("other"), 3.0, False, id="other holder, alive"),
        pytest.param(rec("other"), 9.9, False, id="other holder, not expired yet"),
        pytest.param(rec("other"), 10.0, True, id="no renewal seen for a whole duration"),
        pytest.param(rec("other", duration=0), 1.0, True, id="broken duration counts as 1 s"),
    ],
)
def test_may_acquire(record: LeaseRecord | None, unchanged_for: float, expected: bool) -> None:
    assert may_acquire(record, "me", unchanged_for) is expected


@pytest.mark.parametrize(
    ("record", "release", "expected"),
    [
        pytest.param(
            None, False,
            {"holderIdentity": "me", "leaseDurationSeconds": 10, "leaseTransitions": 0,
             "acquireTime": "2026-05-06T07:08:09.123456Z"},
            id="first holder",
        ),
        pytest.param(
            rec("me", transitions=2), False,
            {"holderIdentity": "me", "leaseDurationSeconds": 10, "leaseTransitions": 2,
             "acquireTime": "t0"},
            id="renewal keeps acquireTime and transitions",
        ),
        pytest.param(
            rec("other", transitions=2), False,
            {"holderIdentity": "me", "leaseDurationSeconds": 10, "leaseTransitions": 3,
             "acquireTime": "2026-05-06T07:08:09.123456Z"},
            id="takeover counts a transition",
        ),
        pytest.param(
            rec("me", transitions=2), True,
            {"holderIdentity": None, "leaseDurationSeconds": 1, "leaseTransitions": 2,
             "acquireTime": "2026-05-06T07:08:09.123456Z"},
            id="release hands it back",
        ),
    ],
)  # fmt: skip
def test_lease_spec(record: LeaseRecord | None, release: bool, expected: dict[str, Any]) -> None:
    spec = lease_spec(record, "me", 10, NOW, release=release)
    assert spec.pop("renewTime") == "2026-05-06T07:08:09.123456Z"
    assert spec == expected


def test_record_of_reads_a_lease_and_what_counts_as_a_sign_of_life() -> None:
    lease = {
        "metadata": {"resourceVersion": "42"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 8, "renewTime": "r",
                 "leaseTransitions": 1, "acquireTime": "q"},
    }  # fmt: skip
    got = record_of(lease)
    assert got == LeaseRecord("a", 8, "r", 1, "q", "42")
    assert record_of(None) is None
    assert got.same_term(LeaseRecord("a", 8, "r", 1, "q", "43"))  # rv alone is no renewal
    assert not got.same_term(LeaseRecord("a", 8, "r2", 1, "q", "43"))


def test_lease_settings() -> None:
    s = OperatorSettings.from_sources({"namespaces": ("ml", "ai")}, {})
    assert (s.leader.lease_name, s.lease_home, s.leader.lease_seconds) == (
        DEFAULT_LEASE,
        "ml",
        10.0,
    )
    assert OperatorSettings.from_sources({"all_namespaces": True}, {}).lease_home == "default"
    assert OperatorSettings.from_sources({"namespaces": ("ml-*", "x")}, {}).lease_home == "x"
    env = {"OLLAMA_FLEET_OPERATOR_LEASE_NAMESPACE": "ops"}
    assert OperatorSettings.from_sources({}, env).lease_home == "ops"
    with pytest.raises(ValueError, match="at least 3 seconds"):
        OperatorSettings.from_sources({"lease_seconds": 1.0}, {})


# ------------------------------------------------------------ replicas as processes (kube)


class OperatorProcess:
    """``ollama-fleet operator`` as a child process (leader election on), its log in a file."""

    def __init__(
        self, cluster: KubeCluster, namespace: str, identity: str, registry: str, *extra: str
    ) -> None:
        self.identity = identity
        self.log_path = cluster.dir / f"operator-{namespace}-{identity}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_FLEET_OPERATOR_")}
        argv = [
            sys.executable, "-m", "ollama_fleet", "operator",
            "-n", namespace, "--kubeconfig", str(cluster.kubeconfig),
            "--identity", identity, "--resync-seconds", "1", "--backoff-seconds", "0.1",
            "--attempts", "2", "--ollama-timeout-seconds", "1",
            "--registry-mirrors", f"registry.ollama.ai={registry}", *extra,
        ]  # fmt: skip
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as Kubernetes stops a pod: the holder hands the Lease back."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only our own child, by its handle
            self.proc.wait(5)
            raise

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind, the Lease stays with the dead holder."""
        self.proc.send_signal(signal.SIGKILL)  # our own child, by its handle
        self.proc.wait(5)


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


@pytest.fixture
async def fleet_env(
    kube_cluster: KubeCluster, kube_namespace: str, modelpool_crd: None
) -> AsyncIterator[Env]:
    api = kube_cluster.api_client()
    try:
        async with EmulatedFleet(three_gpu_fleet()) as fleet, aiohttp.ClientSession() as session:
            yield Env(kube_cluster, api, kube_namespace, fleet, session)
    finally:
        api.close()


async def _holder(env: Env) -> str:
    coordination = client.CoordinationV1Api(env.api)
    try:
        lease = await env.k(coordination.read_namespaced_lease, DEFAULT_LEASE, env.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "") if lease.spec is not None else ""


async def _events_by(env: Env, pool: str) -> dict[str, tuple[str, str, int]]:
    """The pool's Events by name: (reportingInstance, reason, count)."""
    core = client.CoreV1Api(env.api)
    evs = await env.k(
        core.list_namespaced_event, env.namespace, field_selector=f"involvedObject.name={pool}"
    )
    return {
        str(e.metadata.name): (e.reporting_instance or "", e.reason or "", e.count or 1)
        for e in evs.items
    }


def _spec(replicas: int) -> dict[str, Any]:
    return {
        "selector": {"matchLabels": {"app": "ollama"}},
        "models": [{"name": "llama3.2:1b", "replicas": replicas}],
    }


async def _loaded_on(env: Env, n: int) -> list[int] | None:
    nodes = await env.resident("llama3.2:1b")
    return nodes if len(nodes) == n else None


async def test_only_the_lease_holder_acts_and_a_standby_takes_over_after_kill_9(
    fleet_env: Env,
) -> None:
    env = fleet_env
    for i in range(3):
        await env.add_pod(f"ollama-{i}", i)
    registry = env.fleet.registry.url
    first = OperatorProcess(env.cluster, env.namespace, "op-a", registry)
    await eventually(
        lambda: _holder(env), "op-a to hold the Lease", accept=lambda h: h == "op-a", timeout=30
    )
    second = OperatorProcess(env.cluster, env.namespace, "op-b", registry)
    with operators(first, second):
        await eventually(
            lambda: asyncio.sleep(0, second.log),
            "op-b to start",
            accept=lambda log: "leader election on Lease" in log,
        )
        # 1. Only the holder acts.
        await env.apply_pool("chat", _spec(1))
        await eventually(lambda: _loaded_on(env, 1), "one replica")
        await eventually(
            lambda: _events_by(env, "chat"),
            "op-a's Loaded event",
            accept=lambda evs: ("op-a", "Loaded", 1) in evs.values(),
        )
        await asyncio.sleep(1.5)  # a resync or two of op-b, if it acted
        assert {who for who, _, _ in (await _events_by(env, "chat")).values()} == {"op-a"}
        assert await _holder(env) == "op-a"

        # 2. kill -9 of the holder: the standby acts within 15 s.
        before = await _events_by(env, "chat")
        first.kill()
        killed = time.monotonic()
        await env.apply_pool("chat", _spec(2))
        await eventually(lambda: _loaded_on(env, 2), "two replicas, by op-b", timeout=30)
        took = time.monotonic() - killed
        print(f"\nthe standby acted {took:.1f}s after kill -9 of the holder")
        assert took < 15.0
        assert await _holder(env) == "op-b"
        await eventually(
            lambda: _events_by(env, "chat"),
            "op-b's Loaded event",
            accept=lambda evs: (
                ("op-b", "Loaded", 1) in [v for k, v in evs.items() if k not in before]
            ),
        )
        assert "lease" in second.log and "acquired by op-b" in second.log

        # 3. A clean stop hands the Lease back at once: a new replica takes over quickly.
        third = OperatorProcess(env.cluster, env.namespace, "op-c", registry)
        with operators(third):
            await eventually(
                lambda: asyncio.sleep(0, third.log),
                "op-c to start",
                accept=lambda log: "leader election on Lease" in log,
            )
            stopped = time.monotonic()
            assert await asyncio.to_thread(second.stop) == 0
            await eventually(
                lambda: _holder(env), "op-c to take over", accept=lambda h: h == "op-c", timeout=10
            )
            handover = time.monotonic() - stopped
            print(f"clean handover took {handover:.1f}s")
            assert handover < 5.0
            await env.apply_pool("chat", _spec(3))
            await eventually(lambda: _loaded_on(env, 3), "three replicas, by op-c")
            assert await asyncio.to_thread(third.stop) == 0
