"""The event loop every process runs on (ollama_wire.loop): uvloop unless told otherwise."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import uvloop

from ollama_wire.loop import LOOP_ENV, loop_factory, loop_name, run


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "uvloop", id="default is uvloop"),
        pytest.param("auto", "uvloop", id="auto"),
        pytest.param(" UVLoop ", "uvloop", id="case and spaces"),
        pytest.param("asyncio", "asyncio", id="asyncio on request"),
        pytest.param("", "uvloop", id="empty means auto"),
    ],
)
def test_loop_choice(value: str | None, expected: str) -> None:
    environ = {} if value is None else {LOOP_ENV: value}
    factory = loop_factory(environ)
    assert (factory is uvloop.new_event_loop) == (expected == "uvloop")
    assert (factory is None) == (expected == "asyncio")


def test_unknown_loop_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="expected auto, uvloop or asyncio"):
        loop_factory({LOOP_ENV: "trio"})


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_run_uses_the_chosen_loop(choice: str) -> None:
    async def which() -> str:
        return loop_name(asyncio.get_running_loop())

    assert run(which(), {LOOP_ENV: choice}) == ("uvloop" if choice == "auto" else "asyncio")


def test_the_balancer_says_which_loop_it_runs() -> None:
    """The real process says which loop it runs, after its address (the backend is never
    reached: nothing listens on port 9)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollama_fleet", "balancer", "--host", "127.0.0.1", "--port", "0",
         "--backends", "a=http://127.0.0.1:9", "--log-level", "error"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "listening on http://127.0.0.1:" in proc.stdout.readline()
        assert proc.stdout.readline().strip() == "ollama-fleet balancer event loop: uvloop"
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
