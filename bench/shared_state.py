"""``python -m bench.shared_state [--smoke]``: what shared state costs, on a real redis-server.

Starts its own ``redis-server`` on loopback (Debian package; .ci/tools.sh installs it) and
measures, per operation: the round trip and the CPU of an acquire and a release on the balancer's
side (local state beside it) and on the store's (the scripts' time, from Redis's command
statistics), the same with the scheduler's board (a holder document and a fair-share charge in
the same scripts), the cost of one full refresh of the mirror and the board as the number of
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
from typing import Any

from bench.redis_server import RedisServer
from ollama_balancer.core.priority import Priority
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.board import Charge, SlotHolder
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.core.shared.model import Lease
from ollama_balancer.shared.store import RedisState

MODEL = "llama3:latest"
#: What the scheduler adds to an acquire (and its correction to a release).
HOLDER = SlotHolder(
    "", "", "", "", "", cls=Priority.BATCH, tenant="tenant-a", expected_seconds=12.5, resumable=True
)
CHARGE = Charge((MODEL, Priority.BATCH, "tenant-a"), 12.5, floor=3.0)
CORRECTION = Charge((MODEL, Priority.BATCH, "tenant-a"), -1.5)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _row(name: str, wall: list[float], cpu: float, store: float | None = None) -> str:
    ms = [x * 1000 for x in wall]
    per = cpu / len(wall) * 1e6
    server = "–" if store is None else f"{store:.0f}"
    return (
        f"| {name} | {len(wall)} | {statistics.median(ms):.3f} | {_pct(ms, 0.99):.3f} "
        f"| {per:.0f} | {server} |"
    )


class _ScriptTime:
    """The store's time in scripts (EVALSHA), from its command statistics, in µs per call."""

    def __init__(self, store: RedisState) -> None:
        self.client = store.connection.client()

    async def reset(self) -> None:
        await self.client.config_resetstat()

    async def per_call(self) -> float:
        stats: dict[str, Any] = await self.client.info("commandstats")
        entry = stats.get("cmdstat_evalsha", {})
        calls = int(entry.get("calls", 0))
        return float(entry.get("usec", 0)) / calls if calls else 0.0


Ops = tuple[list[float], list[float], float, float]


async def _ops(
    store: RedisState | LocalState, n: int, variants: tuple[bool, ...] = (False,)
) -> dict[bool, Ops]:
    """``n`` acquires and releases per variant (with the board or not), interleaved op by op
    so that a busy machine weighs on every variant alike: walls and CPU seconds of each."""
    out: dict[bool, Ops] = {}
    for board in variants:
        out[board] = ([], [], 0.0, 0.0)
    for i in range(n):
        for board in variants:
            acq, rel, cpu_a, cpu_r = out[board]
            extra: dict[str, Any] = {"holder": HOLDER, "charge": CHARGE} if board else {}
            c0, t0 = time.process_time(), time.perf_counter()
            grant = await store.acquire("gpu-0", MODEL, slots=4, request_id=f"{i}{board}", **extra)
            c1, t1 = time.process_time(), time.perf_counter()
            assert grant.lease is not None
            if board:
                await store.release(grant.lease, charge=CORRECTION)
            else:
                await store.release(grant.lease)
            acq.append(t1 - t0)
            rel.append(time.perf_counter() - t1)
            out[board] = (acq, rel, cpu_a + c1 - c0, cpu_r + time.process_time() - c1)
    return out


async def _script_times(store: RedisState, n: int, *, board: bool) -> tuple[float, float]:
    """The store's µs per acquire and per release: all acquires first, then all releases, so
    that Redis's per-command statistics tell them apart."""
    timer = _ScriptTime(store)
    extra: dict[str, Any] = {"holder": HOLDER, "charge": CHARGE} if board else {}
    await timer.reset()
    leases: list[Lease] = []
    for i in range(n):
        grant = await store.acquire("gpu-9", MODEL, slots=n + 1, request_id=f"s{i}", **extra)
        assert grant.lease is not None
        leases.append(grant.lease)
    acquire = await timer.per_call()
    await timer.reset()
    for lease in leases:
        await store.release(lease, charge=CORRECTION if board else None)
    return acquire, await timer.per_call()


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
        "| operation | n | p50 ms | p99 ms | CPU µs/op (balancer side) | store µs/op (scripts) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    a = RedisState(parse_store_url(url), replica="a", keys=Keys("bench"), op_timeout=1.0)
    b = RedisState(parse_store_url(url), replica="b", keys=Keys("bench"), op_timeout=1.0)
    await a.connect()
    await b.connect()
    try:
        acq, rel, cpu_a, cpu_r = (await _ops(LocalState(), n))[False]
        lines.append(
            _row(
                "local acquire + release (today)",
                [x + y for x, y in zip(acq, rel, strict=True)],
                cpu_a + cpu_r,
            )
        )
        shared = await _ops(a, n, (False, True))
        for board in (False, True):
            acq, rel, cpu_a, cpu_r = shared[board]
            store_a, store_r = await _script_times(a, n, board=board)
            if board:
                names = (
                    "shared acquire + holder + charge (one script)",
                    "shared release + charge (one script)",
                )
            else:
                names = ("shared acquire (one script)", "shared release (one script)")
            lines.append(_row(names[0], acq, cpu_a, store_a))
            lines.append(_row(names[1], rel, cpu_r, store_r))

        # Event propagation: acquire on a, until b's mirror shows it.
        subscribed = asyncio.Event()
        listener = asyncio.create_task(b.listen(subscribed))
        async with asyncio.timeout(10):  # a listener that failed would leave this forever
            await subscribed.wait()
        lag = []
        for i in range(min(n, 500)):
            t0 = time.perf_counter()
            grant = await a.acquire("gpu-1", MODEL, slots=4, request_id=f"e{i}")
            assert grant.lease is not None
            while b.mirror.held(("gpu-1", MODEL)) != 1:
                await asyncio.sleep(0)
            lag.append(time.perf_counter() - t0)
            await a.release(grant.lease)
            while b.mirror.held(("gpu-1", MODEL)) != 0:
                await asyncio.sleep(0)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        lines.append(_row("acquire on A → visible in B's mirror", lag, 0.0))

        # Refresh cost (counts and board: two scripts, one round trip) as the (pod, model)
        # pairs holding leases, each with its holder document, grow.
        held = 0
        timer = _ScriptTime(b)
        for k in pairs:
            while held < k:
                await a.acquire(f"pod-{held}", "m", slots=1, request_id=f"f{held}", holder=HOLDER)
                held += 1
            walls = []
            await timer.reset()
            c0 = time.process_time()
            for _ in range(50):
                t0 = time.perf_counter()
                await b.refresh()
                walls.append(time.perf_counter() - t0)
            cpu = time.process_time() - c0
            lines.append(_row(f"full refresh, {k} pairs", walls, cpu, 2 * await timer.per_call()))
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
