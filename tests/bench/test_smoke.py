"""Seconds-long runs of every benchmark, so the harness cannot rot.

They use the real processes (emulator, balancer, nginx, the load generator) but tiny
counts.  nginx is part of the CI toolset (.ci/tools.sh): its absence is a failure, not a
skip.  The LiteLLM peer is left out (742 MB, two-minute install).
"""

from __future__ import annotations

import math

import pytest

from bench import common, control, conversations, overhead, routing, streaming, tracing_cost

pytestmark = pytest.mark.timeout(180)


def _need_nginx() -> None:
    if common.nginx_binary() is None:
        pytest.fail(
            "nginx is not installed: the benchmark smoke tests compare against it; "
            "run `bash .ci/tools.sh` (it installs Debian's nginx) or `apt-get install nginx`"
        )


def test_overhead_smoke() -> None:
    _need_nginx()
    doc = overhead.run(overhead.SMOKE)
    targets = {r["target"] for r in doc["rows"]}
    assert targets == {"direct", "balancer", "nginx"}
    for r in doc["rows"]:
        assert r["errors"] == 0, r
        assert r["completed"] == overhead.SMOKE.requests, r
        assert r["p50_ms"] > 0
    bal = [r for r in doc["rows"] if r["target"] == "balancer"]
    assert all(r["rss_mib"] > 0 for r in bal)
    assert "| balancer |" in overhead.render(doc)


def test_streaming_smoke() -> None:
    _need_nginx()
    doc = streaming.run(streaming.SMOKE)
    assert {r["target"] for r in doc["rows"]} == {"direct", "balancer", "nginx"}
    for r in doc["rows"]:
        assert r["errors"] == 0, r
        assert r["chunks"] > 0 and not math.isnan(r["gap_p99_ms"]), r
    assert "| nginx |" in streaming.render(doc)


def test_routing_smoke() -> None:
    _need_nginx()
    doc = routing.run(routing.SMOKE)
    names = {r["policy"] for r in doc["rows"]}
    assert {"ollama-fleet", "least-connections", "nginx least_conn"} <= names
    for r in doc["rows"]:
        assert r["requests"] > 0
        assert r["failed"] <= r["requests"]
        assert r["cold_loads"] >= 1, r  # nothing starts loaded
    assert "| ollama-fleet |" in routing.render(doc)


def test_conversations_smoke() -> None:
    """Session headers keep every turn of a conversation on its pod; without affinity the
    turns scatter (a seeded trace, so the order below holds run after run)."""
    doc = conversations.run(conversations.SMOKE)
    rows = {r["setup"]: r for r in doc["rows"]}
    assert set(rows) == set(conversations.SETUPS)
    cfg = conversations.SMOKE
    for r in rows.values():
        assert r["turns"] == cfg.conversations * cfg.turns
    assert rows["session header"]["stickiness"] == 1.0
    assert rows["no affinity"]["stickiness"] < 1.0
    hits = rows["session header"].get("cache_hit_ratio")
    if hits is not None:  # an emulator with a per-slot prompt cache says what it saved
        assert hits >= rows["no affinity"]["cache_hit_ratio"]
    assert "| session header |" in conversations.render(doc)


def test_control_smoke() -> None:
    doc = control.run(control.SMOKE)
    assert doc["backends"] == control.SMOKE.backends
    assert doc["cpu_percent"] >= 0
    assert doc["propagation"], doc
    assert all(p < 30 for p in doc["propagation"])
    assert "backends" in control.render(doc)


def test_tracing_cost_smoke() -> None:
    """Tracing off costs (next to) nothing; a sampled request costs more than an unsampled one."""
    cost = tracing_cost.measure(requests=200, rounds=1)
    assert set(cost) == set(tracing_cost.VARIANTS)
    assert cost["off"] < cost["unsampled"] < cost["sampled, no export"]
    assert cost["sampled, no export"] < cost["sampled, OTLP encoding"]
