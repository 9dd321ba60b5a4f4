"""The saturation benchmark (issue #13): its smoke run on real processes, and its simulation.

The smoke run starts the emulator and the balancer for real, early binding (``--no-queue``)
against late binding (``--queue --queue-policy order``) and the reclaiming scheduler
(``--queue --queue-policy reclaim``) on the same trace.
"""

from __future__ import annotations

import math

import pytest

from bench import queue_sim, saturation

pytestmark = pytest.mark.timeout(240)


def test_saturation_smoke() -> None:
    doc = saturation.run(saturation.SMOKE)
    assert [r["policy"] for r in doc["rows"]] == ["early", "late", "reclaim"]
    assert doc["skipped"] == []
    early, late, reclaim = doc["rows"]
    for row in (early, late, reclaim):
        g = row["groups"]
        assert g["all"]["requests"] == doc["trace_size"]
        # Nothing fails; the scheduler's admission may refuse (429) the heavy tenant's
        # requests beyond its class's maximum wait, never the light one inside its share.
        assert g["all"]["failed"] == g["all"]["refused"], (row["policy"], g["all"])
        assert g["tenant light"]["refused"] == 0, (row["policy"], g["tenant light"])
        if row["policy"] != "reclaim":
            assert g["all"]["refused"] == 0, (row["policy"], g["all"])
        assert g["tenant heavy"]["requests"] > 3 * g["tenant light"]["requests"]
        assert g["light alone"]["requests"] == g["tenant light"]["requests"]
        keys = ("all", "class critical", "class batch")
        assert all(not math.isnan(g[k]["ttft_p99"]) for k in keys)
    e, lt = early["groups"], late["groups"]
    # Offered load above capacity: with early binding requests queue inside Ollama ...
    assert early["ollama_waiting_peak"] > 0
    # ... and the light tenant pays for the heavy one's flood.
    assert e["tenant light"]["ttft_p99"] > e["light alone"]["ttft_p99"]
    # Late binding: they wait in the balancer instead, critical before batch.
    assert late["ollama_waiting_peak"] == 0
    assert lt["class critical"]["ttft_p99"] < lt["class batch"]["ttft_p99"]
    # The scheduler: critical before batch too, and the light tenant far better off than with
    # early binding, where it queues behind the heavy tenant inside Ollama.
    r = reclaim["groups"]
    assert r["class critical"]["ttft_p99"] < r["class batch"]["ttft_p99"]
    assert r["tenant light"]["ttft_p99"] < e["tenant light"]["ttft_p99"]
    text = saturation.render(doc)
    assert "| early | tenant light |" in text
    assert "| late | class critical |" in text
    assert "| reclaim | class critical |" in text


def test_policy_flags_are_the_balancers() -> None:
    """Every flag the benchmark passes exists in this balancer's ``--help`` (bool flags are
    ``--queue``/``--no-queue``), so neither policy can silently run as the other."""
    flags = saturation.balancer_flags()
    cfg = saturation.Config()
    early = saturation.policy_flags("early", cfg)
    late = saturation.policy_flags("late", cfg)
    assert early == ["--no-queue"]
    assert late is not None and late[0] == "--queue"
    assert {f for f in late if f.startswith("--")} <= flags
    assert "--no-queue" in flags


def test_unknown_policy_is_refused() -> None:
    cfg = saturation.Config(policies=("early", "fastest"))
    with pytest.raises(SystemExit, match="fastest"):
        saturation.run(cfg)


def test_trace_is_seeded_and_shaped() -> None:
    cfg = saturation.Config()
    a, b = saturation.make_trace(cfg), saturation.make_trace(cfg)
    assert a == b
    over = [it for it in a if it["tags"]["phase"] == "over"]
    under = [it for it in a if it["tags"]["phase"] == "under"]
    # Offered load: about 1.5x capacity, then 0.5x (Poisson, so loosely).
    assert len(over) / cfg.overload_seconds > 1.2 * cfg.capacity()
    assert len(under) / cfg.underload_seconds < 0.8 * cfg.capacity()
    assert {it["tags"]["class"] for it in a if it["tags"]["tenant"] == "light"} <= {
        "critical",
        "standard",
    }
    assert all(it["headers"]["X-Priority"] == it["tags"]["class"] for it in a)


def test_simulated_late_binding_keeps_ollama_queues_empty_and_orders_classes() -> None:
    """The pure core through the same trace: what late binding should show once integrated."""
    doc = queue_sim.run(saturation.Config())
    rows = {r["policy"]: r for r in doc["rows"]}
    early, late = rows["early"], rows["late"]
    assert early["ollama_waiting_peak"] > 0
    assert late["ollama_waiting_peak"] == 0  # everyone waits in the balancer
    e, lt = early["groups"], late["groups"]
    assert e["all"]["failed"] == lt["all"]["failed"] == 0
    assert lt["class critical"]["ttft_p99"] <= 0.3 * lt["class batch"]["ttft_p99"]
    assert lt["tenant light"]["ttft_p99"] < 0.5 * e["tenant light"]["ttft_p99"]
