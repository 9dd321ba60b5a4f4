"""``python -m bench proxy`` with shared state on (issue #12): its smoke run on real processes,
and the pure difference it reports.

The smoke run pins the balancer (alone on one CPU when there are two), starts a real
redis-server for ``balancer+shared``, loads both balancers with wrk and streams through them.
wrk, nginx and redis-server come from the CI toolset: their absence fails, not skips.
"""

from __future__ import annotations

import math
import shutil

import pytest

from bench import common, proxy

pytestmark = pytest.mark.timeout(120)


def test_proxy_smoke_with_shared_state() -> None:
    missing = [
        name
        for name, found in (
            ("wrk", common.wrk_binary()),
            ("nginx", common.nginx_binary()),
            ("redis-server", shutil.which("redis-server")),
        )
        if not found
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (apt-get install wrk nginx redis-server)")
    doc = proxy.run(proxy.SMOKE)
    targets = ["direct", "balancer", proxy.SHARED, "nginx"]
    assert list(dict.fromkeys(r["target"] for r in doc["tiny"])) == targets
    assert list(dict.fromkeys(r["target"] for r in doc["streams"])) == targets
    for r in doc["tiny"]:
        assert r["errors"] == 0, r
        assert r["requests"] > 0, r
        assert r["p50_ms"] > 0, r
    for r in doc["streams"]:
        assert r["errors"] == 0, r
        assert r["chunks"] == 10 * 11, r  # 10 streams × (10 tokens + the final line)
    for target in ("balancer", "nginx"):
        cpu = doc["summary"][target]
        # /proc counts CPU in 10 ms ticks: nginx's share of a smoke run may round to 0.
        assert cpu["cpu_us_per_req"] >= 0 and cpu["cpu_us_per_chunk"] >= 0, cpu
    assert doc["summary"]["balancer"]["cpu_us_per_req"] > 0
    shared = [r for r in doc["tiny"] if r["target"] == proxy.SHARED]
    assert all(r["cpu_us_per_req"] > 0 for r in shared)
    cost = doc["shared_cost"]
    assert [x["concurrency"] for x in cost] == list(proxy.SMOKE.concurrency)
    assert all(not math.isnan(x["cpu_us_per_req"]) for x in cost)
    text = proxy.render(doc)
    assert "| balancer+shared |" in text and "| balancer |" in text
    assert "CPU µs/req" in text and "Pinning:" in text
    assert "Added by shared state" in text


def _tiny(target: str, c: int, cpu: float, p50: float, p99: float, rps: float) -> dict[str, object]:
    return {
        "target": target, "concurrency": c, "cpu_us_per_req": cpu, "p50_ms": p50,
        "p99_ms": p99, "rps": rps,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            [_tiny("balancer", 1, 100, 1.0, 2.0, 1000), _tiny(proxy.SHARED, 1, 250, 1.5, 4.0, 800)],
            [(1, 150.0, 2.5, 0.5, 2.0, 0.8)],
            id="shared-minus-plain",
        ),
        pytest.param(
            [
                _tiny("balancer", 1, 100, 1.0, 2.0, 1000),
                _tiny("nginx", 1, 10, 0.1, 0.2, 9000),
                _tiny(proxy.SHARED, 32, 300, 9.0, 20.0, 500),
                _tiny("balancer", 32, 200, 8.0, 25.0, 1000),
            ],
            [(32, 100.0, 1.5, 1.0, -5.0, 0.5)],
            id="paired-by-concurrency-only",
        ),
        pytest.param(
            [_tiny("balancer", 1, 100, 1.0, 2.0, 1000)],
            [],
            id="no-shared-row-no-cost",
        ),
    ],
)
def test_shared_cost(
    rows: list[dict[str, object]], expected: list[tuple[int, float, float, float, float, float]]
) -> None:
    got = proxy.shared_cost(rows)
    assert [
        (x["concurrency"], x["cpu_us_per_req"], x["cpu_ratio"], x["p50_ms"], x["p99_ms"],
         x["rps_ratio"])
        for x in got
    ] == [pytest.approx(e) for e in expected]  # fmt: skip
