"""``--workers N``: N balancer processes on one port that route as one (issue #18).

The supervisor starts a private redis-server for them (none is configured here), so a
cold burst through four workers starts one load and slots are never oversubscribed;
``/metrics`` on the operations port merges every worker's series.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bench import common
from ollama_balancer.workers import cpus_allowed, merge_expositions
from tests.harness.replicas import COLD, WARM, Fleet, burst, nodes, start

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("cpu_max", "cfs", "affinity", "cpus"),
    [
        pytest.param("200000 100000", None, 8, 2, id="cgroup v2 quota of 2"),
        pytest.param("150000 100000", None, 8, 2, id="1.5 CPUs round up"),
        pytest.param("max 100000", None, 4, 4, id="no quota: the affinity"),
        pytest.param("800000 100000", None, 2, 2, id="never above the affinity"),
        pytest.param(None, ("300000", "100000"), 8, 3, id="cgroup v1"),
        pytest.param(None, ("-1", "100000"), 6, 6, id="cgroup v1 unlimited"),
        pytest.param(None, None, 1, 1, id="nothing known"),
        pytest.param("garbage", None, 3, 3, id="unreadable"),
    ],
)
def test_cpus_allowed(
    cpu_max: str | None, cfs: tuple[str, str] | None, affinity: int, cpus: int
) -> None:
    assert cpus_allowed(cpu_max, cfs, affinity) == cpus


def test_metrics_of_workers_merge_with_a_worker_label() -> None:
    one = '# HELP x_total x\n# TYPE x_total counter\nx_total{model="m"} 2.0\n'
    two = '# HELP x_total x\n# TYPE x_total counter\nx_total{model="m"} 3.0\n'
    text = merge_expositions([(0, one), (1, two)]).decode()
    assert text.count("# TYPE x_total counter") == 1
    assert 'x_total{model="m",worker="0"} 2.0' in text
    assert 'x_total{model="m",worker="1"} 3.0' in text


async def test_four_workers_route_as_one(tmp_path: Path) -> None:
    procs = common.Procs(tmp_path)
    async with AsyncExitStack() as stack:
        stack.callback(procs.stop_all)
        spec = [(n, [WARM, COLD], [WARM]) for n in ("a", "b", "c")]
        ops = common.free_port()
        f: Fleet = await start(
            stack,
            procs,
            nodes(spec, 4),
            replicas=1,
            slots=4,
            redis_url=None,
            extra=["--workers", "4", "--ops-port", str(ops)],
        )
        balancer = f.urls[0]
        async with asyncio.timeout(30):  # every worker listening before any traffic
            while True:
                async with f.session.get(f"http://127.0.0.1:{ops}/readyz") as resp:
                    if len((await resp.json())["workers_ready"]) == 4:
                        break
                await asyncio.sleep(0.1)
        # Twelve long streams on three pods × four slots: four each, none waiting in Ollama.
        for n in f.fleet.nodes:
            n.faults.slow(2000.0)
        streams = [asyncio.ensure_future(f.stream(balancer, f"w{i}")) for i in range(12)]
        try:
            runners = lambda: [r for n in f.fleet.nodes for r in n.scheduler.runners.values()]  # noqa: E731
            async with asyncio.timeout(15):
                while sum(r.refcount for r in runners() if r.name.startswith("llama")) < 12:
                    await asyncio.sleep(0.05)
            busy = {
                n.name: sum(
                    r.in_flight for r in n.scheduler.runners.values() if r.name.startswith("llama")
                )
                for n in f.fleet.nodes
            }
            assert busy == {"a": 4, "b": 4, "c": 4}
            assert all(r.waiting == 0 for r in runners())
        finally:
            for t in streams:
                t.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
        for n in f.fleet.nodes:
            n.faults.clear()
        # A cold burst (one replica would join them all to one load at 4 slots a pod):
        # one load, however the kernel spreads the connections between the workers.
        assert await burst(f, balancer, COLD, 16) == [200] * 16
        assert f.loads() == 1

        def counted(text: str) -> dict[str, float]:
            per_worker: dict[str, float] = {}
            for line in text.splitlines():
                if line.startswith("ollama_fleet_requests_total{"):
                    worker = line.split('worker="')[1].split('"')[0]
                    per_worker[worker] = per_worker.get(worker, 0) + float(line.rsplit(" ", 1)[1])
            return per_worker

        async with asyncio.timeout(10):  # the cancelled streams' records land a moment later
            while True:
                async with f.session.get(f"http://127.0.0.1:{ops}/metrics") as resp:
                    per_worker = counted(await resp.text())
                if sum(per_worker.values()) >= 16 + 12:
                    break
                await asyncio.sleep(0.1)
        # every request counted once, by the worker that served it
        assert sum(per_worker.values()) == 16 + 12
        assert set(per_worker) <= {"0", "1", "2", "3"}
