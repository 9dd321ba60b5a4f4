"""``python -m bench.shared_state [--smoke]``: what shared state costs, on a real redis-server.

Starts its own ``redis-server`` on loopback (Debian package; .ci/tools.sh installs it) and
measures, per operation: the round trip and the balancer-side CPU of an acquire and a release
(local state beside it), the cost of one full refresh of the mirror as the number of
(pod, model) pairs grows, and how long an acquire on one replica takes to reach another
replica's mirror through the events channel.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.redis_server import RedisServer
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.shared.store import RedisState


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _row(name: str, wall: list[float], cpu: float) -> str:
    ms = [x * 1000 for x in wall]
    per = cpu / len(wall) * 1e6
    return (
        f"| {name} | {len(wall)} | {statistics.median(ms):.3f} | {_pct(ms, 0.99):.3f} | {per:.0f} |"
    )


async def _ops(store: RedisState | LocalState, n: int) -> tuple[list[float], list[float], float]:
    acq, rel = [], []
    c0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        grant = await store.acquire("gpu-0", "llama3:latest", slots=4, request_id=str(i))
        t1 = time.perf_counter()
        assert grant.lease is not None
        await store.release(grant.lease)
        acq.append(t1 - t0)
        rel.append(time.perf_counter() - t1)
    return acq, rel, time.process_time() - c0


async def run(n: int, pairs: tuple[int, ...]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            return await _measure(server.url, n, pairs)
        finally:
            server.stop()


async def _measure(url: str, n: int, pairs: tuple[int, ...]) -> str:
    lines = [
        "| operation | n | p50 ms | p99 ms | CPU µs/op (balancer side) |",
        "|---|---:|---:|---:|---:|",
    ]
    a = RedisState(parse_store_url(url), replica="a", keys=Keys("bench"), op_timeout=1.0)
    b = RedisState(parse_store_url(url), replica="b", keys=Keys("bench"), op_timeout=1.0)
    await a.connect()
    await b.connect()
    try:
        acq, rel, cpu = await _ops(LocalState(), n)
        lines.append(
            _row(
                "local acquire + release (today)",
                [x + y for x, y in zip(acq, rel, strict=True)],
                cpu,
            )
        )
        acq, rel, cpu = await _ops(a, n)
        lines.append(_row("shared acquire (one script)", acq, cpu / 2))
        lines.append(_row("shared release (one script)", rel, cpu / 2))

        # Event propagation: acquire on a, until b's mirror shows it.
        subscribed = asyncio.Event()
        listener = asyncio.create_task(b.listen(subscribed))
        await subscribed.wait()
        lag = []
        for i in range(min(n, 500)):
            t0 = time.perf_counter()
            grant = await a.acquire("gpu-1", "llama3:latest", slots=4, request_id=f"e{i}")
            assert grant.lease is not None
            while b.mirror.held(("gpu-1", "llama3:latest")) != 1:
                await asyncio.sleep(0)
            lag.append(time.perf_counter() - t0)
            await a.release(grant.lease)
            while b.mirror.held(("gpu-1", "llama3:latest")) != 0:
                await asyncio.sleep(0)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        lines.append(_row("acquire on A → visible in B's mirror", lag, 0.0))

        # Refresh cost as the (pod, model) pairs holding leases grow.
        held = 0
        for k in pairs:
            while held < k:
                await a.acquire(f"pod-{held}", "m", slots=1, request_id=f"f{held}")
                held += 1
            walls = []
            c0 = time.process_time()
            for _ in range(50):
                t0 = time.perf_counter()
                await b.refresh()
                walls.append(time.perf_counter() - t0)
            lines.append(_row(f"full refresh, {k} pairs", walls, time.process_time() - c0))
    finally:
        await a.close()
        await b.close()
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shared_state", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="a second-long version")
    args = p.parse_args()
    n, pairs = (50, (10,)) if args.smoke else (2000, (10, 100, 1000))
    print(asyncio.run(run(n, pairs)))


if __name__ == "__main__":
    main()
