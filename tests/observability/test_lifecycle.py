"""A real balancer process and a real SIGTERM: unready at once, drain, finish streams, exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from ollama_emulator import EmulatedFleet, FleetConfig
from tests.harness.fleet import node

DRAIN_DELAY = 1.0
DRAIN_GRACE = 8.0


@asynccontextmanager
async def balancer_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_FLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ollama_fleet",
        "balancer",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-format",
        "json",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        found = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert found and found.group(2) != "0", f"no bound port in {line!r}"
        yield proc, found.group(1)
    finally:
        if proc.returncode is None:
            proc.kill()  # only this test's own child, by its handle
            await proc.wait()


async def probe(url: str) -> tuple[int, Any] | None:
    """One request on a fresh connection; None when the connection is refused, or cut as the
    listener closes under it (at the end of drain_delay either can happen)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        try:
            async with s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status, await resp.json()
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ClientConnectionResetError,
            aiohttp.ServerDisconnectedError,
        ):
            return None


async def test_sigterm_unready_at_once_drains_and_lets_streams_finish() -> None:
    config = FleetConfig(nodes=[node("a", ["llama3.2"], ["llama3.2"])], time_scale=0.01)
    async with EmulatedFleet(config) as fleet:
        pod = fleet.node("a")
        async with balancer_process(
            "--backends",
            f"a={pod.url}",
            "--poll-interval",
            "0.2",
            "--drain-delay",
            str(DRAIN_DELAY),
            "--drain-grace",
            str(DRAIN_GRACE),
        ) as (proc, url):
            async with asyncio.timeout(10):
                while (await probe(url + "/readyz") or (0,))[0] != 200:
                    await asyncio.sleep(0.05)
            pod.faults.slow(600)  # 24 tokens ≈ 3 s: the stream outlives drain_delay
            async with aiohttp.ClientSession() as client:
                resp = await client.post(
                    url + "/api/generate", json={"model": "llama3.2", "prompt": "hi"}
                )
                assert resp.status == 200
                first = await resp.content.readline()
                assert json.loads(first)["done"] is False

                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                # Readiness flips at once, while the listener still accepts.
                async with asyncio.timeout(DRAIN_DELAY / 2):
                    while True:
                        answer = await probe(url + "/readyz")
                        assert answer is not None, "stopped accepting before drain_delay"
                        if answer[0] == 503:
                            break
                        await asyncio.sleep(0.02)
                assert answer[1]["draining"] is True
                assert await probe(url + "/healthz") == (200, {"status": "ok"})
                # After drain_delay the listener closes: new connections are refused.
                async with asyncio.timeout(DRAIN_DELAY + 3):
                    while await probe(url + "/healthz") is not None:
                        await asyncio.sleep(0.05)
                assert time.monotonic() - t0 >= DRAIN_DELAY * 0.9
                assert proc.returncode is None, "exited while a stream was in flight"
                # The in-flight stream runs to its natural end.
                rest = await resp.read()
                lines = [json.loads(x) for x in (first + rest).splitlines()]
                assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
                assert len(lines) == lines[-1]["eval_count"] + 1
            async with asyncio.timeout(DRAIN_GRACE):
                assert await proc.wait() == 0
            elapsed = time.monotonic() - t0
            assert elapsed < DRAIN_GRACE
            assert proc.stderr is not None
            logs = [json.loads(x) for x in (await proc.stderr.read()).splitlines() if x.strip()]
            done = [x for x in logs if x.get("event") == "request"]
            assert [(x["status"], x["client_gone"]) for x in done] == [(200, False)]
            assert pod.stats.generations_completed == 1 and pod.stats.generations_cancelled == 0


async def test_sigterm_cuts_streams_that_outlive_the_grace_period() -> None:
    config = FleetConfig(nodes=[node("a", ["llama3.2"], ["llama3.2"])], time_scale=0.01)
    async with EmulatedFleet(config) as fleet:
        pod = fleet.node("a")
        async with balancer_process(
            "--backends", f"a={pod.url}", "--drain-delay", "0", "--drain-grace", "1"
        ) as (proc, url):
            async with asyncio.timeout(10):
                while (await probe(url + "/readyz") or (0,))[0] != 200:
                    await asyncio.sleep(0.05)
            pod.faults.slow(3000)  # a token every 0.6 s: 24 tokens take ~15 s
            async with aiohttp.ClientSession() as client:
                resp = await client.post(
                    url + "/api/generate", json={"model": "llama3.2", "prompt": "hi"}
                )
                assert resp.status == 200
                assert json.loads(await resp.content.readline())["done"] is False
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                async with asyncio.timeout(6):
                    assert await proc.wait() == 0
                assert time.monotonic() - t0 < 4
                resp.close()
            # Closing the upstream stopped the generation on the pod (nothing runs for nobody).
            async with asyncio.timeout(5):
                while pod.stats.generations_cancelled < 1:
                    await asyncio.sleep(0.02)
