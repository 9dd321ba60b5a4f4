"""The event loop the balancer's tests run on: the one production runs on.

A ``conftest.py`` of a directory whose tests drive the balancer imports
:func:`pytest_asyncio_loop_factories` (pytest-asyncio's hook), so only those tests move to
uvloop; the emulator's and the operator's stay on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from ollama_wire.loop import loop_factory

__all__ = ["pytest_asyncio_loop_factories"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The balancer's tests run on the loop production runs on (ollama_wire.loop): uvloop,
    unless OLLAMA_FLEET_LOOP=asyncio."""
    factory = loop_factory()
    return {"uvloop": factory} if factory is not None else {"asyncio": asyncio.new_event_loop}
