"""The captured answers the resume tests read are still what the emulator answers."""

from __future__ import annotations

from typing import Any

import orjson

from tests.harness.resume_streams import FRAMES, capture, frames_of, steady


def parsed(frame: str) -> Any:
    """One frame's JSON (an SSE event's data), ``[DONE]`` as it is."""
    data = frame.rsplit("data: ", 1)[-1].strip() if frame.startswith(("data:", "event:")) else frame
    return data if data == "[DONE]" else orjson.loads(data)


def event(frame: str) -> str:
    """An SSE event's ``event:`` line ("" for other frames)."""
    return frame.split("\n", 1)[0] if frame.startswith("event:") else ""


async def test_the_captured_answers_are_the_emulators() -> None:
    live = {name: frames_of(raw) for name, raw in (await capture()).items()}
    assert list(live) == list(FRAMES)
    for name, stored in FRAMES.items():
        assert [steady(parsed(f)) for f in live[name]] == [steady(parsed(f)) for f in stored], name
        assert [event(f) for f in live[name]] == [event(f) for f in stored], name
