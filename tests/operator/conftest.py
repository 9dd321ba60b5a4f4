"""Fixtures shared by the operator's tests against the real API server."""

from __future__ import annotations

import pytest

from tests.harness.kube import KubeCluster
from tests.harness.operator_env import install_modelpool_crd


@pytest.fixture(scope="session")
def modelpool_crd(kube_cluster: KubeCluster) -> None:
    """The ModelPool CRD from manifests/crds, installed (or updated) once per session."""
    with kube_cluster.client() as api:
        install_modelpool_crd(api)
