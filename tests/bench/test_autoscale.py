"""The "day in fifteen minutes" benchmark (issue #15): its smoke run on real processes (the
emulator, the balancer, the operator against a real kube-apiserver, the load generator), and
its trace."""

from __future__ import annotations

import pytest

from bench import autoscale

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(300)]


def test_autoscale_smoke() -> None:
    doc = autoscale.run(autoscale.SMOKE)
    by = {r["mode"]: r for r in doc["rows"]}
    assert list(by) == list(autoscale.MODES)
    for r in by.values():
        assert r["all"]["requests"] == doc["trace_size"]
        assert r["all"]["failed"] == 0, r["all"]
    # fixed-4 holds four copies of peak all day; fixed-1 one pinned (plus cold loads).
    day = autoscale.SMOKE.day_seconds
    assert by["fixed-4"]["peak_copy_seconds"] == pytest.approx(4 * day, rel=0.15)
    assert by["fixed-4"]["cold_loads"] == 0
    # The autoscaled mode follows the day: one copy at night, more at noon, fewer copy-seconds
    # than fixed-4, and its last decision is in status.
    copies = [p["copies"] for p in by["auto"]["peak_copies"]]
    assert copies[0] == 1 and max(copies) >= 3, copies
    assert by["auto"]["peak_copy_seconds"] < by["fixed-4"]["peak_copy_seconds"]
    assert by["auto"]["autoscale"]["reason"].startswith("scaled"), by["auto"]["autoscale"]
    text = autoscale.render(doc)
    assert "| auto |" in text and "auto / fixed-4: peak TTFT p99" in text


def test_trace_is_seeded_and_shaped() -> None:
    cfg = autoscale.Config()
    a, b = autoscale.make_trace(cfg), autoscale.make_trace(cfg)
    assert a == b
    peak = [it for it in a if it["model"] == autoscale.PEAK]
    quarter = cfg.day_seconds / 4
    night = [
        it for it in peak if it["at"] < quarter / 2 or it["at"] > cfg.day_seconds - quarter / 2
    ]
    noon = [it for it in peak if abs(it["at"] - cfg.day_seconds / 2) < quarter / 2]
    # the same span of time: noon brings several times night's traffic
    assert len(noon) > 4 * len(night)
    steady = [it for it in a if it["model"] == "steady-a"]
    expected = cfg.steady * cfg.copy_rate() * cfg.day_seconds
    assert abs(len(steady) - expected) < 0.2 * expected
    assert [it["at"] for it in a] == sorted(it["at"] for it in a)
