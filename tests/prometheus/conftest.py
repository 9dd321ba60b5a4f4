"""The prometheus suite's fixture: a real Prometheus watching a real balancer and operator
(:mod:`tests.harness.observed`), started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.kube import KubeCluster
from tests.harness.observed import ObservedFleet, running_observed_fleet


@pytest.fixture(scope="session")
def observed_fleet(kube_cluster: KubeCluster) -> Iterator[ObservedFleet]:
    with running_observed_fleet(kube_cluster) as fleet:
        yield fleet
