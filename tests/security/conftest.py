"""Security tests reuse the balancer rig: emulated nodes + a balancer, all on loopback."""

from tests.balancer.conftest import pytest_asyncio_loop_factories, rig_factory  # noqa: F401
