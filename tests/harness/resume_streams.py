"""Real answers for the resume tests, captured from the emulator into ``resume_streams.json``.

Regenerate the file with ``.venv/bin/python -m tests.harness.resume_streams`` after a
change to the emulator's wire shapes; ``test_resume_streams.py`` fails while the two
differ (ids and times aside).  Each request asks for four tokens of ``llama3.2``
(``*_json``: the same request, not streamed); the ``anthropic_tool`` answers are
``qwen3:8b`` calling its tool, thinking turned off.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig, default_catalogue

__all__ = ["CAPTURED", "FRAMES", "REQUESTS", "VOLATILE", "capture", "frames", "frames_of", "steady"]

_FILE = Path(__file__).with_name("resume_streams.json")

_USER = [{"role": "user", "content": "Why is the sky blue?"}]
_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

#: name → (path, body); each ``*_json`` is its stream's request answered as one object.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/api/chat", {"model": "llama3.2", "messages": _USER, "options": {"num_predict": 4}}),
    "generate": (
        "/api/generate",
        {"model": "llama3.2", "prompt": "The sky is", "raw": True, "options": {"num_predict": 4}},
    ),
    "openai": (
        "/v1/chat/completions",
        {
            "model": "llama3.2",
            "messages": _USER,
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "anthropic": (
        "/v1/messages",
        {"model": "llama3.2", "messages": _USER, "max_tokens": 4, "stream": True},
    ),
    "anthropic_tool": (
        "/v1/messages",
        {
            "model": "qwen3:8b",
            "messages": _USER,
            "max_tokens": 64,
            "stream": True,
            "tools": [_TOOL],
            "thinking": {"type": "disabled"},
        },
    ),
}
for _name in ("chat", "generate", "openai", "anthropic", "anthropic_tool"):
    _path, _body = REQUESTS[_name]
    REQUESTS[_name + "_json"] = (_path, {**_body, "stream": False})
REQUESTS["openai_json"][1].pop("stream_options")


#: What the emulator answered to each of :data:`REQUESTS`, frame by frame.
FRAMES: dict[str, list[str]] = json.loads(_FILE.read_text())
CAPTURED: dict[str, bytes] = {name: "".join(fs).encode() for name, fs in FRAMES.items()}


def frames(name: str, count: int | None = None) -> list[bytes]:
    """The first ``count`` frames (all by default) of a captured answer, as bytes."""
    return [f.encode() for f in FRAMES[name][:count]]


async def capture() -> dict[str, bytes]:
    """Every request of :data:`REQUESTS`, answered by a fresh emulated node."""
    node = NodeConfig(
        name="capture", host="127.0.0.1", port=0, installed=["llama3.2", "qwen3:8b"],
        loaded=["llama3.2", "qwen3:8b"],
    )  # fmt: skip
    config = FleetConfig(nodes=[node], catalogue=default_catalogue(), time_scale=0.001)
    out: dict[str, bytes] = {}
    async with EmulatedFleet(config) as fleet, aiohttp.ClientSession() as http:
        for name, (path, body) in REQUESTS.items():
            async with http.post(fleet.nodes[0].url + path, json=body) as resp:
                out[name] = await resp.read()
    return out


#: Fields that differ between two answers to the same request: ids, clocks, timings.
#: Fields that differ between two answers to the same request: ids, clocks, and the prompt's
#: reading time (the second answer finds the first one's prompt in the slot's cache).
VOLATILE = frozenset(
    {"id", "created", "created_at", "total_duration", "load_duration", "prompt_eval_duration"}
)


def steady(value: Any) -> Any:
    """``value`` with its volatile fields blanked, keys kept in their order."""
    if isinstance(value, dict):
        return [(k, None if k in VOLATILE else steady(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [steady(v) for v in value]
    return value


def frames_of(raw: bytes) -> list[str]:
    """An answer cut into its frames (NDJSON lines, SSE events), terminators kept."""
    end = b"\n\n" if raw.startswith((b"data: ", b"event: ")) else b"\n"
    frames = [f + end for f in raw.split(end) if f]
    if not raw.endswith(end):  # one JSON answer without a trailing newline
        frames[-1] = frames[-1][: -len(end)]
    return [f.decode() for f in frames]


if __name__ == "__main__":
    captured = asyncio.run(capture())
    table = {name: frames_of(raw) for name, raw in captured.items()}
    _FILE.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {_FILE}")
