"""pytest fixtures for the real Kubernetes control plane (see :mod:`tests.kube.cluster`).

``tests/conftest.py`` imports them so every test directory can use them:

- ``kube_cluster`` (session): etcd + kube-apiserver on loopback.  FAILS (never skips) when
  the binaries are missing, so CI cannot go green by skipping.
- ``kube_cluster_with_controllers`` (session): a second cluster that also runs
  kube-controller-manager and kube-scheduler (Deployments → Pods bound to Node objects).
- ``kube_api`` (function): an admin ``kubernetes.client.ApiClient`` for ``kube_cluster``.
- ``kube_namespace`` (function): a fresh namespace with its ``default`` ServiceAccount.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.kube.cluster import (
    KubeBinaries,
    KubeCluster,
    KubeToolsMissing,
    create_default_service_account,
    create_namespace,
    delete_namespace,
)

__all__ = ["kube_api", "kube_cluster", "kube_cluster_with_controllers", "kube_namespace"]

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
