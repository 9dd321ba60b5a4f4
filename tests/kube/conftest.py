"""Tests of the Kubernetes test fixture itself; the fixtures live in ``fixtures.py`` and are
imported by ``tests/conftest.py`` so that every test directory can use them."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kube/" in item.nodeid:
            item.add_marker(pytest.mark.kube)
