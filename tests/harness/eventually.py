"""Wait for a state that has no event to await: poll it, with a deadline and a message.

Tests await events where the code under test offers one (a response, a task, an
``asyncio.Event``).  Counters of an emulated node, a balancer's ledger, a ModelPool's status
on the API server or a child process's log have none, so a test polls them with
:func:`eventually` (inside the event loop) or :func:`eventually_blocking` (in a plain test
or fixture that drives blocking clients: helm, kubectl, urllib).

A probe that is a plain callable reads in-process state: reading it costs nothing, so it is
read every millisecond and no short-lived state (a load in progress, a request waiting
for a slot) slips between two reads.  A probe that returns an awaitable talks to a server
(an API server, an HTTP endpoint): it is read every 0.2 s, so the waiting test does not
load the server it waits for.  ``interval`` overrides either.

The default timeout is generous on purpose: a wait that succeeds returns as soon as the
probe's value is accepted, so the timeout only bounds how long a failing test takes, and
a busy CI machine (an API server, an operator and the test on two cores) must not fail a
correct test.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

__all__ = ["eventually", "eventually_blocking"]

T = TypeVar("T")

TIMEOUT = 30.0
"""Seconds before a wait fails, unless the caller says otherwise."""
STATE_INTERVAL = 0.001
"""Seconds between two reads of in-process state (a plain callable)."""
SERVER_INTERVAL = 0.2
"""Seconds between two awaited probes (a request to a server)."""

What = str | Callable[[], str] | None


def _describe(probe: Callable[..., object], what: What) -> str:
    if callable(what):
        return what()
    if what is not None:
        return what
    # No message given: name the probe and where it is written, enough to find the wait.
    code = getattr(probe, "__code__", None)
    where = f" ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})" if code else ""
    return f"{getattr(probe, '__qualname__', repr(probe))}{where}"


def _failure(probe: Callable[..., object], what: What, timeout: float, last: object) -> str:
    return f"timed out after {timeout:g}s waiting for {_describe(probe, what)}; last: {last!r}"


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: What = None,
    *,
    accept: Callable[[T], object] | None = None,
    timeout: float = TIMEOUT,
    interval: float | None = None,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    what: What = None,
    *,
    accept: Callable[[T], object] | None = None,
    timeout: float = TIMEOUT,
    interval: float | None = None,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    what: What = None,
    *,
    accept: Callable[[Any], object] | None = None,
    timeout: float = TIMEOUT,
    interval: float | None = None,
) -> Any:
    """Read ``probe`` (awaiting its value if it is awaitable) until ``accept`` takes the value
    (by default: until it is truthy), and return that value.

    After ``timeout`` seconds the test fails with ``what`` (a text, or a callable giving one
    then) and the last value read.  An exception from the probe ends the wait at once.
    """
    check = accept or bool
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        value = probe()
        awaited = inspect.isawaitable(value)
        if awaited:
            value = await value
        if check(value):
            return value
        last = value
        if loop.time() >= deadline:
            raise AssertionError(_failure(probe, what, timeout, last))
        pause = interval if interval is not None else SERVER_INTERVAL if awaited else STATE_INTERVAL
        await asyncio.sleep(pause)


def eventually_blocking(
    probe: Callable[[], T | None],
    what: What = None,
    *,
    accept: Callable[[T], object] | None = None,
    timeout: float = TIMEOUT,
    interval: float = SERVER_INTERVAL,
) -> T:
    """:func:`eventually` for code outside the event loop: the same contract, with blocking
    sleeps between reads (this probe talks to a server or reads a file: every 0.2 s)."""
    check: Callable[[Any], object] = accept or bool
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if check(value):
            return cast(T, value)
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(probe, what, timeout, value))
        time.sleep(interval)
