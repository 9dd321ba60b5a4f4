"""``ollama-fleet emulate`` as a real process: it serves, and stops on SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp


async def test_emulate_serves_until_interrupted(http: aiohttp.ClientSession) -> None:
    argv = ["-m", "ollama_fleet", "emulate", "--nodes", "2", "--base-ip", "127.0.0.1"]
    argv += ["--same-ip", "--port", "0", "--time-scale", "0.01", "--loaded", "llama3.2"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(2)]
        urls = [line.split("\t")[1] for line in lines]
        assert len(set(urls)) == 2
        for url in urls:
            async with http.get(url + "/api/ps") as r:
                assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
