"""``python -m bench routing --replicas N`` (issue #12): its smoke run on real processes, and
the pure summary that states the target.

The smoke run starts the emulator, three balancer processes sharing a real redis-server behind
a round-robin nginx, then three without it, then one replica, and plays a tiny trace through
each.  redis-server and nginx come from .ci/tools.sh: their absence fails, not skips.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest

from bench import common, routing

pytestmark = pytest.mark.timeout(120)

SMOKE = dataclasses.replace(routing.SMOKE, replicas=3)


def _need_tools() -> None:
    found = {"nginx": common.nginx_binary(), "redis-server": shutil.which("redis-server")}
    missing = [name for name, path in found.items() if not path]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `bash .ci/tools.sh`")


def test_routing_replicas_smoke() -> None:
    _need_tools()
    doc = routing.run(SMOKE)
    names = list(routing.replica_setups(3))
    assert [r["policy"] for r in doc["rows"]] == names
    rows = {r["policy"]: r for r in doc["rows"]}
    for r in rows.values():
        assert r["requests"] > 0
        assert r["cold_loads"] >= 1, r  # nothing starts loaded
        assert not math.isnan(r["ttft_p99"]), r
        assert r["proxy_cpu_s"] > 0, r
    assert [rows[n]["replicas"] for n in names] == [1, 3, 3]
    # Only the shared set-up ran a redis-server, and it did work.
    assert rows[names[1]]["store_cpu_s"] > 0
    assert math.isnan(rows[names[0]]["store_cpu_s"])
    assert math.isnan(rows[names[2]]["store_cpu_s"])
    assert rows[names[0]]["fallbacks"] == rows[names[2]]["fallbacks"] == 0
    summary = doc["replica_summary"]
    assert [x["setup"] for x in summary] == names[1:]
    text = routing.render(doc)
    assert "| steady | 3 replicas, shared state |" in text
    assert "within 10%?" in text


def _row(policy: str, loads: int, p99: float, scenario: str = "steady") -> dict[str, object]:
    return {"scenario": scenario, "policy": policy, "cold_loads": loads, "ttft_p99": p99}


ONE, SHARED, UNSHARED = routing.replica_setups(3)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            [_row(ONE, 10, 20.0), _row(SHARED, 11, 22.0), _row(UNSHARED, 14, 30.0)],
            [(SHARED, 1.1, 1.1, True), (UNSHARED, 1.4, 1.5, False)],
            id="exactly-10-percent-worse-is-within",
        ),
        pytest.param(
            [_row(ONE, 10, 20.0), _row(SHARED, 8, 15.0), _row(UNSHARED, 10, 20.0)],
            [(SHARED, 0.8, 0.75, True), (UNSHARED, 1.0, 1.0, True)],
            id="better-than-one-replica-passes",
        ),
        pytest.param(
            [_row(ONE, 10, 20.0), _row(SHARED, 10, 22.2), _row(UNSHARED, 12, 20.0)],
            [(SHARED, 1.0, 1.11, False), (UNSHARED, 1.2, 1.0, False)],
            id="either-figure-over-fails",
        ),
        pytest.param(
            [_row(ONE, 10, 20.0), _row(UNSHARED, 12, 20.0)],
            [(UNSHARED, 1.2, 1.0, False)],
            id="a-missing-set-up-is-left-out",
        ),
        pytest.param(
            [_row(SHARED, 10, 20.0)],
            [],
            id="no-one-replica-row-no-ratios",
        ),
        pytest.param(
            [
                *(_row(ONE, n, 20.0) for n in (10, 12, 30)),
                *(_row(SHARED, n, p) for n, p in ((11, 60.0), (13, 21.0), (9, 22.0))),
                _row(UNSHARED, 40, 50.0),
                _row(SHARED, 99, 99.0, scenario="bursty"),
            ],
            [(SHARED, 0.92, 1.1, True), (UNSHARED, 3.33, 2.5, False)],
            id="medians-over-runs-one-outlier-each-side",
        ),
    ],
)
def test_replica_summary(
    rows: list[dict[str, object]], expected: list[tuple[str, float, float, bool]]
) -> None:
    cfg = dataclasses.replace(routing.Config(), replicas=3, scenarios=("steady",))
    got = routing.replica_summary(cfg, rows)
    assert [
        (x["setup"], round(x["cold_loads_ratio"], 2), round(x["ttft_p99_ratio"], 2), x["met"])
        for x in got
    ] == expected


def test_one_replica_runs_the_policies_not_the_set_ups() -> None:
    assert routing.replica_summary(routing.Config(), [_row(ONE, 1, 1.0)]) == []


EARLY, RECLAIM = routing.binding_setups(("early", "reclaim"), 3)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # No worse on both: met (equal counts as no worse).
        ([_row(EARLY, 10, 2.0), _row(RECLAIM, 10, 1.5)], [(RECLAIM, 1.0, 0.75, True)]),
        # One more cold load: not met, whatever the TTFT.
        ([_row(EARLY, 10, 2.0), _row(RECLAIM, 11, 1.0)], [(RECLAIM, 1.1, 0.5, False)]),
        # Medians over runs: the odd run does not decide.
        (
            [
                _row(EARLY, 10, 2.0),
                _row(EARLY, 10, 2.0),
                _row(EARLY, 30, 9.0),
                _row(RECLAIM, 9, 2.0),
                _row(RECLAIM, 10, 1.0),
                _row(RECLAIM, 40, 9.0),
            ],
            [(RECLAIM, 1.0, 1.0, True)],
        ),
        # TTFT p99 within the bind bubble's 1%: no worse; beyond it: worse.
        ([_row(EARLY, 10, 30.0), _row(RECLAIM, 10, 30.2)], [(RECLAIM, 1.0, 1.01, True)]),
        ([_row(EARLY, 10, 30.0), _row(RECLAIM, 10, 30.6)], [(RECLAIM, 1.0, 1.02, False)]),
        # Without early binding's run there is nothing to compare against.
        ([_row(RECLAIM, 10, 1.0)], []),
    ],
)
def test_binding_summary(
    rows: list[dict[str, object]], expected: list[tuple[str, float, float, bool]]
) -> None:
    cfg = dataclasses.replace(
        routing.Config(), replicas=3, scenarios=("steady",), policies=("early", "reclaim")
    )
    got = routing.binding_summary(cfg, rows)
    assert [
        (x["setup"], round(x["cold_loads_ratio"], 2), round(x["ttft_p99_ratio"], 2), x["met"])
        for x in got
    ] == expected


def test_binding_setups_name_the_replicas() -> None:
    assert list(routing.binding_setups(("early", "reclaim"), 1)) == [
        "early, 1 replica",
        "reclaim, 1 replica",
    ]
    assert routing.binding_setups(("reclaim",), 3)["reclaim, 3 replicas, shared state"] == (
        routing.Binding("reclaim", 3)
    )
