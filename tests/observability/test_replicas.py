"""Two balancer replicas in front of one emulated fleet spread load without herding.

Each replica knows only its own in-flight counts; residency comes from its own
polls; ties between equally good pods are broken by its own random generator.
Nothing is shared, yet the fleet sees an even spread.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.harness.fleet import Rig, RigFactory, node

PODS = [f"gpu-{i}" for i in range(4)]
WORKERS = 2  # concurrent clients per replica: fewer than pods, so ties matter
PER_WORKER = 40


async def _client(rig: Rig, replica: int, worker: int, seen: Counter[tuple[int, str]]) -> None:
    for n in range(PER_WORKER):
        async with rig.session.post(
            rig.urls[replica] + "/api/generate",
            # Distinct prompts: no conversation affinity pins them anywhere.
            json={"model": "llama3.2", "prompt": f"replica {replica} worker {worker} #{n}"},
        ) as resp:
            await resp.read()
            assert resp.status == 200
            assert resp.headers["X-Route-Reason"] == "resident"
            seen[(replica, resp.headers["X-Ollama-Backend"])] += 1


async def test_two_replicas_spread_over_four_resident_pods(rig_factory: RigFactory) -> None:
    rig = await rig_factory(
        [node(p, ["llama3.2"], ["llama3.2"]) for p in PODS], replicas=2, poll_interval=0.5
    )
    seen: Counter[tuple[int, str]] = Counter()
    async with asyncio.timeout(60):
        await asyncio.gather(*(_client(rig, r, w, seen) for r in range(2) for w in range(WORKERS)))
    total = 2 * WORKERS * PER_WORKER
    per_pod = {p: rig.node(p).stats.requests["/api/generate"] for p in PODS}
    assert sum(per_pod.values()) == total
    assert per_pod == {p: seen[(0, p)] + seen[(1, p)] for p in PODS}  # what the pods saw
    mean = total / len(PODS)
    for pod, n in per_pod.items():
        assert 0.5 * mean <= n <= 1.5 * mean, f"{pod} got {n} of {total}: {per_pod}"
    for replica in range(2):
        mine = [seen[(replica, p)] for p in PODS]
        assert sum(mine) == total // 2
        assert min(mine) >= 0.25 * (total // 2) / len(PODS), f"replica {replica} herds: {mine}"
    # Each replica counts only its own traffic, in its own registry.
    for replica in range(2):
        m = await rig.scrape(replica)
        assert sum(m.series("ollama_fleet_requests_total").values()) == total // 2
        assert set(m.series("ollama_fleet_inflight_requests").values()) == {0.0}
