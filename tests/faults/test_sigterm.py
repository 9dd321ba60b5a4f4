"""SIGTERM during a cold load: a real balancer process drains, the request completes once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig

M = "llama3.2:3b"


async def test_sigterm_during_a_load_lets_it_finish() -> None:
    config = FleetConfig(
        nodes=[NodeConfig(name="a", host="127.0.0.1", installed=[M])], time_scale=0.5
    )
    async with EmulatedFleet(config) as fleet:
        node = fleet.nodes[0]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ollama_fleet", "balancer",
            "--host", "127.0.0.1", "--port", "0", "--backends", f"a={node.url}",
            "--drain-grace", "20", "--log-level", "warning",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                line = (await proc.stdout.readline()).decode()
            assert "listening on" in line, line
            url = line.rsplit(" ", 1)[1].strip()
            async with aiohttp.ClientSession() as s:
                req = asyncio.ensure_future(
                    s.post(
                        url + "/api/generate", json={"model": M, "prompt": "hi", "stream": False}
                    )
                )
                async with asyncio.timeout(20):
                    while node.stats.loads_started == 0:
                        await asyncio.sleep(0.02)
                assert node.stats.loads_completed == 0
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    resp = await req
                    assert resp.status == 200
                    doc = await resp.json()
                assert doc["done"] is True
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert node.stats.loads_started == 1 and node.stats.loads_aborted == 0
        assert node.stats.requests["/api/generate"] == 1
        assert node.stats.generations_completed == 1
