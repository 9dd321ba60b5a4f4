"""The fleet scaling signals on a real Prometheus that scraped a real balancer (conftest.py):
the demand gauges are there, and the query the chart's KEDA ScaledObject runs answers."""

from __future__ import annotations

import math

import pytest

from ollama_balancer.metrics import FLEET_DEMAND_RATIO, MODEL_DEMAND, MODEL_SLOTS
from tests.harness.chart import find, helm_path, render
from tests.harness.observed import BALANCER_JOB, LLAMA, NAMESPACE, ObservedFleet

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_demand_gauges_are_scraped(observed_fleet: ObservedFleet) -> None:
    prom = observed_fleet.prometheus
    for name in (MODEL_DEMAND, MODEL_SLOTS):
        models = {s["metric"]["model"] for s in prom.query(f'{name}{{job="{BALANCER_JOB}"}}')}
        assert LLAMA in models, (name, models)
    (ratio,) = prom.query(f'{FLEET_DEMAND_RATIO}{{job="{BALANCER_JOB}"}}')
    assert ratio["metric"]["namespace"] == NAMESPACE
    assert float(ratio["value"][1]) >= 0


def test_the_scaled_objects_query_answers(observed_fleet: ObservedFleet) -> None:
    """The query the chart renders for the release namespace, run as KEDA would run it."""
    objs = render(
        helm_path(),
        sets=[
            "ollama.autoscaling.keda.enabled=true",
            f"ollama.autoscaling.keda.prometheusServerAddress={observed_fleet.prometheus.url}",
        ],
        namespace=NAMESPACE,
    )
    trigger = find(objs, "ScaledObject", "-ollama")["spec"]["triggers"][0]["metadata"]
    (sample,) = observed_fleet.prometheus.query(trigger["query"])
    value = float(sample["value"][1])
    assert math.isfinite(value) and value >= 0
    # the sum over balancer replicas: here one replica, so the gauge itself
    (ratio,) = observed_fleet.prometheus.query(FLEET_DEMAND_RATIO)
    assert value == pytest.approx(float(ratio["value"][1]))
