"""The event loop every ollama-fleet process runs on: uvloop on Linux and macOS, else asyncio's.

uvloop (libuv under Cython) does the socket, timer and callback work of a proxied
request and of every streamed chunk in C; on the balancer it cut the CPU per tiny
request and per chunk (docs/benchmarks.md).  ``OLLAMA_FLEET_LOOP=asyncio`` falls back
to the standard loop (to compare, or to rule uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["LOOP_ENV", "loop_factory", "loop_name", "run"]

T = TypeVar("T")

#: ``auto`` (default: uvloop where it is installed and supported), ``uvloop`` or ``asyncio``.
LOOP_ENV = "OLLAMA_FLEET_LOOP"


def loop_factory(
    environ: Mapping[str, str] = os.environ,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop.

    Raises :class:`RuntimeError` when uvloop is asked for by name and cannot be had.
    """
    choice = environ.get(LOOP_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "uvloop", "asyncio"):
        raise RuntimeError(f"{LOOP_ENV}={choice!r}: expected auto, uvloop or asyncio")
    if choice == "asyncio" or (choice == "auto" and sys.platform == "win32"):
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a process reports it runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], environ: Mapping[str, str] = os.environ) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory(environ)) as runner:
        return runner.run(main)
