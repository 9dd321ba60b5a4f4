"""Fixtures shared by the operator's tests against the real API server."""

from __future__ import annotations

import pytest

from tests.kube.cluster import KubeCluster
from tests.operator.test_e2e import _install_crd


@pytest.fixture(scope="session")
def modelpool_crd(kube_cluster: KubeCluster) -> None:
    """The ModelPool CRD from manifests/crds, installed (or updated) once per session."""
    with kube_cluster.client() as api:
        _install_crd(api)
