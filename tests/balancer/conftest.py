"""The balancer's tests: a balancer in front of emulated Ollama nodes, all real servers on
loopback (``rig_factory``, from ``tests/conftest.py``), on the loop production runs on."""

from tests.harness.loop import pytest_asyncio_loop_factories  # noqa: F401
