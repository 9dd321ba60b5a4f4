"""Fixtures every test directory may use.  Fakes are real loopback servers; nothing here
mocks aiohttp.  The servers themselves live in :mod:`tests.harness`; this file wires them.

- ``kube_cluster`` (session): etcd + kube-apiserver on loopback (:mod:`tests.harness.kube`).
  FAILS (never skips) when the binaries built by .ci/tools.sh are missing, so CI cannot go
  green by skipping.
- ``kube_cluster_with_controllers`` (session): a second cluster that also runs
  kube-controller-manager and kube-scheduler (Deployments → Pods bound to Node objects).
- ``kube_api`` (function): an admin ``kubernetes.client.ApiClient`` for ``kube_cluster``.
- ``kube_namespace`` (function): a fresh namespace with its ``default`` ServiceAccount.
- ``rig_factory`` (function): ``await rig_factory(nodes(...), **settings)``, a balancer in
  front of emulated nodes (:class:`tests.harness.fleet.Rig`), polling fast; the
  observability suite overrides it with its own defaults.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from ollama_emulator import NodeConfig
from tests.harness.fleet import Rig, RigFactory, start_rig
from tests.harness.kube import (
    KubeBinaries,
    KubeCluster,
    KubeToolsMissing,
    create_default_service_account,
    create_namespace,
    delete_namespace,
)

_ns_counter = itertools.count(1)


def _start(controllers: bool) -> KubeCluster:
    try:
        binaries = KubeBinaries.locate()
    except KubeToolsMissing as e:
        pytest.fail(f"Kubernetes test binaries: {e}", pytrace=False)
    cluster = KubeCluster(binaries, controllers=controllers)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    cluster = _start(controllers=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_cluster_with_controllers() -> Iterator[KubeCluster]:
    cluster = _start(controllers=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_api(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:
    # A test that stopped the apiserver and failed before restarting it must not break the
    # tests after it.
    kube_cluster.ensure_apiserver()
    with kube_cluster.client() as api:
        yield api


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, kube_api: client.ApiClient) -> Iterator[str]:
    name = f"t{os.getpid()}-{next(_ns_counter)}"
    create_namespace(kube_api, name)
    create_default_service_account(kube_api, name)
    try:
        yield name
    finally:
        kube_cluster.ensure_apiserver()
        with kube_cluster.client() as api:
            delete_namespace(api, name)


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    stack = AsyncExitStack()
    session = await stack.enter_async_context(aiohttp.ClientSession())

    async def make(node_configs: list[NodeConfig], **kw: Any) -> Rig:
        for name, value in (
            ("poll_interval", 0.25),
            ("poll_timeout", 1.0),
            ("connect_timeout", 1.0),
        ):
            kw.setdefault(name, value)
        return await start_rig(stack, session, node_configs, **kw)

    yield make
    await stack.aclose()
