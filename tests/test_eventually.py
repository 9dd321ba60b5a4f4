"""The harness's one wait: what it returns, when it gives up, and what it says then."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.harness.eventually import eventually, eventually_blocking


async def test_returns_the_first_accepted_value_of_a_plain_callable() -> None:
    reads = itertools.count(1)
    assert await eventually(lambda: next(reads), accept=lambda n: n >= 3) == 3


async def test_awaits_an_awaitable_probe_and_stops_at_a_truthy_value() -> None:
    values = iter([None, [], ["ready"]])

    async def probe() -> list[str] | None:
        await asyncio.sleep(0)
        return next(values)

    assert await eventually(probe, "ready", interval=0) == ["ready"]


async def test_a_timeout_fails_with_the_message_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as failed:
        await eventually(lambda: 7, "seven to be even", accept=lambda n: n % 2 == 0, timeout=0.01)
    assert str(failed.value) == "timed out after 0.01s waiting for seven to be even; last: 7"


async def test_without_a_message_the_probe_is_named_where_it_is_written() -> None:
    def never() -> bool:
        return False

    with pytest.raises(AssertionError) as failed:
        await eventually(never, timeout=0.01)
    assert "waiting for test_without_a_message" in str(failed.value)
    assert "never (test_eventually.py:" in str(failed.value)


async def test_a_callable_message_describes_the_state_at_the_failure() -> None:
    state = {"tasks": 1}

    def grow() -> bool:
        state["tasks"] += 1
        return False

    with pytest.raises(AssertionError) as failed:
        await eventually(grow, lambda: f"tasks to settle (now {state['tasks']})", timeout=0.01)
    assert f"tasks to settle (now {state['tasks']})" in str(failed.value)


async def test_an_exception_from_the_probe_ends_the_wait_at_once() -> None:
    def broken() -> bool:
        raise RuntimeError("the server went away")

    with pytest.raises(RuntimeError, match="went away"):
        await eventually(broken, timeout=60)


def test_the_blocking_form_keeps_the_same_contract() -> None:
    reads = itertools.count(1)
    assert eventually_blocking(lambda: next(reads), accept=lambda n: n >= 2, interval=0) == 2
    with pytest.raises(AssertionError, match=r"waiting for a file; last: ''"):
        eventually_blocking(lambda: "", "a file", timeout=0.01, interval=0.001)
