"""Seconds-long runs of every benchmark, so the harness cannot rot.

They use the real processes (emulator, balancer, nginx, the load generator) but tiny
counts.  nginx is part of the CI toolset (.ci/tools.sh): its absence is a failure, not a
skip.  The LiteLLM peer is left out (742 MB, two-minute install).
"""

from __future__ import annotations

import math

import pytest

from bench import common, control, overhead, proxy, routing, streaming

pytestmark = pytest.mark.timeout(180)


def _need_nginx() -> None:
    if common.nginx_binary() is None:
        pytest.fail(
            "nginx is not installed: the benchmark smoke tests compare against it; "
            "run `bash .ci/tools.sh` (it installs Debian's nginx) or `apt-get install nginx`"
        )


def test_proxy_smoke() -> None:
    """The isolated benchmark: pinned proxies, wrk, CPU per request and per chunk."""
    _need_nginx()
    if common.wrk_binary() is None:
        pytest.fail("wrk is not installed: run `bash .ci/tools.sh` or `apt-get install wrk`")
    doc = proxy.run(proxy.SMOKE)
    assert {r["target"] for r in doc["tiny"]} == {"direct", "balancer", "nginx"}
    for r in doc["tiny"]:
        assert r["errors"] == 0 and r["requests"] > 0, r
        assert r["p50_ms"] > 0
    for r in doc["streams"]:
        assert r["errors"] == 0 and r["chunks"] == 10 * 11, r  # 10 tokens + the final line
    for target in ("balancer", "nginx"):
        cpu = doc["summary"][target]
        # /proc counts CPU in 10 ms ticks: nginx's share of a smoke run may round to 0.
        assert cpu["cpu_us_per_req"] >= 0 and cpu["cpu_us_per_chunk"] >= 0, cpu
    assert doc["summary"]["balancer"]["cpu_us_per_req"] > 0
    text = proxy.render(doc)
    assert "| balancer |" in text and "CPU µs/req" in text and "Pinning:" in text


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


def test_control_smoke() -> None:
    doc = control.run(control.SMOKE)
    assert doc["backends"] == control.SMOKE.backends
    assert doc["cpu_percent"] >= 0
    assert doc["propagation"], doc
    assert all(p < 30 for p in doc["propagation"])
    assert "backends" in control.render(doc)
