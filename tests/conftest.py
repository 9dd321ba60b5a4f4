"""Shared fixtures.  Fakes are real loopback servers; nothing here mocks aiohttp."""

# --- Kubernetes control plane (tests/kube): kube_cluster, kube_cluster_with_controllers,
# kube_api, kube_namespace.  Real etcd + kube-apiserver built by .ci/tools.sh; they fail, never
# skip, when the binaries are missing.
from tests.kube.fixtures import (  # noqa: F401
    kube_api,
    kube_cluster,
    kube_cluster_with_controllers,
    kube_namespace,
)
