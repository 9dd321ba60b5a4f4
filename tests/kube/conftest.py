"""Tests of the Kubernetes test harness itself (:mod:`tests.harness.kube`); its fixtures are
wired in ``tests/conftest.py`` so that every test directory can use them."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kube/" in item.nodeid:
            item.add_marker(pytest.mark.kube)
