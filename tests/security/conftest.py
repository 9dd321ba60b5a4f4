"""Security tests reuse the balancer rig (``rig_factory``, from ``tests/conftest.py``):
emulated nodes + a balancer, all on loopback, on the loop production runs on."""

from tests.harness.loop import pytest_asyncio_loop_factories  # noqa: F401
