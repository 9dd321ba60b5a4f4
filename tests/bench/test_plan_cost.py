"""The scheduler's cost benchmark runs (its numbers are read, not asserted: bench/plan_cost.py)."""

from __future__ import annotations

from bench import plan_cost


def test_plan_cost_smoke() -> None:
    doc = plan_cost.run(plan_cost.SMOKE)
    assert [(r["slots"], r["waiting"]) for r in doc["rows"]] == [(8, 16), (64, 256)]
    for r in doc["rows"]:
        assert r["plan_calls"] >= 1 and r["admit_calls"] >= 1
        assert 0 <= r["grants"] <= 2
    assert "| 64 | 256 |" in plan_cost.render(doc)
