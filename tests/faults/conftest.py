"""Fault injection: the balancer rig (``rig_factory``, from ``tests/conftest.py``) on the
loop production runs on; leak accounting is in :mod:`tests.harness.leaks`."""

from tests.harness.loop import pytest_asyncio_loop_factories  # noqa: F401
