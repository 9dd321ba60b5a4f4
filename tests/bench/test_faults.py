"""``python -m bench faults`` (issue #24): its smoke run on real processes, and the pure parts
that classify failures and state the targets.

The smoke run starts three pods (a process each), two balancer replicas sharing a real
redis-server (then a Sentinel group) behind a round-robin nginx, and plays a short bursty
trace four times: without faults, with a pod and a replica killed, then also with the store
restarted empty, and with a Sentinel failover.
redis-server, redis-sentinel and nginx come from .ci/tools.sh: their absence fails.
"""

from __future__ import annotations

import math
import shutil

import pytest

from bench import common, faults

pytestmark = pytest.mark.timeout(240)


def test_faults_smoke() -> None:
    missing = [
        name
        for name, path in {
            "nginx": common.nginx_binary(),
            "redis-server": shutil.which("redis-server"),
            "redis-sentinel": shutil.which("redis-sentinel"),
        }.items()
        if not path
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `bash .ci/tools.sh`")
    doc = faults.run(faults.SMOKE)
    rows = {r["scenario"]: r for r in doc["rows"]}
    assert list(rows) == list(faults.SCENARIOS)
    calm = rows["no faults"]
    assert calm["faults"] == []
    assert calm["failed_unavoidable"] == calm["failed_avoidable"] == 0, calm
    assert calm["fallbacks"] == 0 and calm["store_reconnects"] == 0, calm
    for name in faults.SCENARIOS:
        r = rows[name]
        assert r["requests"] == calm["requests"] > 0  # the same trace
        assert r["cold_loads"] >= 1 and not math.isnan(r["ttft_p99"]), r
        assert r["leases_leaked"] == 0, r
        assert r["failed_avoidable"] == 0, r
        assert sum(r["cold_by_phase"].values()) <= r["cold_loads"], r
    only = rows["pod and replica only"]
    assert [f["kind"] for f in only["faults"]] == ["pod", "replica"], only
    assert only["fallbacks"] == 0 and only["policy"] == "-", only
    for name in faults.STORE_FAULTS:
        r = rows[name]
        assert [f["kind"] for f in r["faults"]] == ["pod", "replica", "store", "store back"], r
        # The live replica lost the store and came back to it, on a new connection.
        assert r["fallbacks"] >= 1 and r["store_reconnects"] >= 1, r
    assert [x["scenario"] for x in doc["targets"]] == list(faults.SCENARIOS[1:])
    text = faults.render(doc)
    assert "| store restarted empty | remember | 1 |" in text and "targets met?" in text


def _rec(**kw: object) -> dict[str, object]:
    return {"at": 1.0, "end": 3.0, "backend": "node-0", "upstream": "", **kw}


POD = faults.Fault("pod", "node-0", 2.0)
REPLICA = faults.Fault("replica", "balancer-1", 2.5)
URLS = {"balancer-0": "http://127.0.0.1:1000", "balancer-1": "http://127.0.0.1:2000"}


@pytest.mark.parametrize(
    ("rec", "unavoidable"),
    [
        pytest.param(_rec(), True, id="streaming from the pod when it died"),
        pytest.param(_rec(backend="node-1"), False, id="another pod"),
        pytest.param(_rec(end=1.5), False, id="ended before the pod died"),
        pytest.param(_rec(at=2.2, end=4.0), False, id="sent to the pod after it died"),
        pytest.param(
            _rec(backend="node-1", upstream="127.0.0.1:2000"), True, id="on the replica that died"
        ),
        pytest.param(
            _rec(backend="node-1", upstream="127.0.0.1:1000"), False, id="on a live replica"
        ),
        pytest.param(
            _rec(backend="", upstream="127.0.0.1:2000", at=2.6, end=2.7),
            False,
            id="sent to the dead replica afterwards",
        ),
    ],
)
def test_failures_in_flight_on_what_died_are_unavoidable(
    rec: dict[str, object], unavoidable: bool
) -> None:
    when = {"pod": POD, "replica": REPLICA}
    assert faults._in_flight_on_the_dead(rec, when, URLS) is unavoidable


def _row(
    scenario: str, loads: int, p99: float, avoidable: int = 0, leaked: int = 0
) -> dict[str, object]:
    return {
        "scenario": scenario,
        "policy": "-" if scenario == "no faults" else "remember",
        "cold_loads": loads,
        "ttft_p99": p99,
        "failed_avoidable": avoidable,
        "leases_leaked": leaked,
    }


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            [_row("no faults", 10, 2.0), _row("store restarted empty", 15, 3.0)],
            [("store restarted empty", 1, 1.5, 1.5, True)],
            id="exactly 1.5x is within",
        ),
        pytest.param(
            [_row("no faults", 10, 2.0), _row("sentinel failover", 16, 2.0)],
            [("sentinel failover", 1, 1.6, 1.0, False)],
            id="too many cold loads",
        ),
        pytest.param(
            [_row("no faults", 10, 2.0), _row("sentinel failover", 10, 2.0, avoidable=1)],
            [("sentinel failover", 1, 1.0, 1.0, False)],
            id="one avoidable failure fails",
        ),
        pytest.param(
            [_row("no faults", 10, 2.0), _row("sentinel failover", 10, 2.0, leaked=1)],
            [("sentinel failover", 1, 1.0, 1.0, False)],
            id="one leaked lease fails",
        ),
        pytest.param(
            [
                *(_row("no faults", n, p) for n, p in ((9, 2.5), (13, 6.0), (14, 5.0))),
                *(_row("sentinel failover", n, 7.0) for n in (17, 25, 21)),
            ],
            [("sentinel failover", 3, 21 / 13, 7.0 / 5.0, False)],
            id="medians over the runs, each side",
        ),
        pytest.param([_row("sentinel failover", 10, 2.0)], [], id="no baseline, no verdict"),
    ],
)
def test_targets(
    rows: list[dict[str, object]], expected: list[tuple[str, int, float, float, bool]]
) -> None:
    got = faults.targets(rows)
    assert [
        (x["scenario"], x["runs"], x["cold_loads_ratio"], x["ttft_p99_ratio"], x["met"])
        for x in got
    ] == [(s, n, pytest.approx(a), pytest.approx(b), m) for s, n, a, b, m in expected]
