"""Security tests reuse the balancer rig: emulated nodes + a balancer, all on loopback."""

from tests.balancer.conftest import rig_factory  # noqa: F401
