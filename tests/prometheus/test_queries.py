"""Every PromQL expression of the Grafana dashboard and of the alert rules, executed by a real
Prometheus that scraped a real balancer and a real operator after traffic (conftest.py)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml

from tests.harness.dashboard import PENDING, queries, substitute, variables
from tests.harness.observed import (
    BALANCER_JOB,
    KEYS,
    MISSING,
    NAMESPACE,
    OPERATOR_JOB,
    ObservedFleet,
)
from tests.harness.promtool import RULES

pytestmark = [pytest.mark.kube, pytest.mark.slow]

#: what Grafana would put in place of the dashboard's variables here
VALUES = {
    "namespace": NAMESPACE,
    "job": BALANCER_JOB,
    "operator_job": OPERATOR_JOB,
    "__rate_interval": "1m",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _records() -> list[dict[str, Any]]:
    return [r for r in _rules() if "record" in r]


def _finite(result: list[dict[str, Any]]) -> list[float]:
    values = [float(s["value"][1]) for s in result]
    return [v for v in values if math.isfinite(v)]


def test_both_targets_are_scraped(observed_fleet: ObservedFleet) -> None:
    targets = observed_fleet.prometheus.api("targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        BALANCER_JOB: "up",
        OPERATOR_JOB: "up",
    }
    # the balancer's build and process collectors, through its ops port
    (info,) = observed_fleet.prometheus.query(f'ollama_fleet_build_info{{job="{BALANCER_JOB}"}}')
    assert info["metric"]["version"] and info["metric"]["python_version"]
    assert observed_fleet.prometheus.query(f'process_resident_memory_bytes{{job="{OPERATOR_JOB}"}}')


def test_dashboard_variables_resolve(observed_fleet: ObservedFleet) -> None:
    """The variable queries (Grafana's label_values) name series and labels that exist."""
    prom = observed_fleet.prometheus
    found = {}
    for name, var in variables().items():
        if var["type"] == "datasource":
            assert var["query"] == "prometheus"
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
        assert m, var["query"]
        selector = substitute(m.group(1), VALUES)
        found[name] = {s[m.group(2)] for s in prom.series(selector)}
    assert found == {
        "namespace": {NAMESPACE},
        "job": {BALANCER_JOB},
        "operator_job": {OPERATOR_JOB},
    }


def test_dashboard_uses_rate_interval_and_its_variables() -> None:
    for q in queries():
        assert "$datasource" not in q.expr  # the datasource is the panel's, not the query's
        for window in re.findall(r"\[([^\]]+)\]", q.expr):
            assert window == "$__rate_interval", (q.panel, q.expr)
        for selector in re.findall(r"ollama_fleet_\w+\{([^}]*)\}|process_\w+\{([^}]*)\}", q.expr):
            text = "".join(selector)
            assert 'namespace="$namespace"' in text, (q.panel, q.expr)
            assert 'job=~"$job"' in text or 'job=~"$operator_job"' in text, (q.panel, q.expr)
    titles = {q.panel for q in queries()}
    assert set(PENDING) <= titles  # the pending list names real panels only
    for needed in ("Residency", "VRAM", "Queue", "429s per key", "Shared state", "per tenant"):
        assert any(needed in t for t in titles), needed


def test_every_dashboard_query_returns_data(observed_fleet: ObservedFleet) -> None:
    prom = observed_fleet.prometheus
    empty = []
    for q in queries():
        expr = substitute(q.expr, VALUES)
        assert "$" not in expr, expr
        result = prom.query(expr)  # a parse or evaluation error fails here
        if q.panel in PENDING:
            continue
        if not _finite(result):
            empty.append(f"{q.panel} [{q.ref}]: {expr} -> {result}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_alert_expression_evaluates(observed_fleet: ObservedFleet) -> None:
    prom = observed_fleet.prometheus
    results = {a["alert"]: prom.query(a["expr"]) for a in _alerts()}
    # the fleet is healthy: no pod down, nothing queued (the 5xx ratio of this short traffic
    # sits near its 5% threshold: it only has to evaluate; the dashboard's 5xx panel shows it)
    assert results["OllamaFleetBackendDown"] == []
    assert results["OllamaFleetNoBackendRoutable"] == []
    assert results["OllamaFleetQueueWaitHigh"] == []
    assert results["OllamaFleetSharedStateDown"] == []
    # the pool wants a model no registry has: the operator's and the balancer's series join
    # on `model`, and only that model is reported
    (unroutable,) = results["OllamaFleetWantedModelUnroutable"]
    assert unroutable["metric"] == {"pool_namespace": NAMESPACE, "pool": "chat", "model": MISSING}
    (degraded,) = results["OllamaFleetModelPoolDegraded"]
    assert degraded["metric"] == {"namespace": NAMESPACE} and degraded["value"][1] == "1"


def test_rules_run_in_prometheus(observed_fleet: ObservedFleet) -> None:
    """Prometheus itself loaded the rule file and evaluates every rule without error."""
    prom = observed_fleet.prometheus
    prom.wait_for(
        'ALERTS{alertname="OllamaFleetWantedModelUnroutable"}',
        lambda r: [s["metric"]["alertstate"] for s in r] == ["pending"],
    )
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(
        [a["alert"] for a in _alerts()] + [r["record"] for r in _records()]
    )
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))


def test_operator_series(observed_fleet: ObservedFleet) -> None:
    prom = observed_fleet.prometheus

    def value(expr: str) -> float:
        (sample,) = prom.query(expr)
        return float(sample["value"][1])

    assert value('sum(ollama_fleet_operator_actions_total{kind="pull", result="ok"})') >= 1
    assert value('sum(ollama_fleet_operator_actions_total{kind="pull", result="failed"})') >= 1
    assert value('sum(ollama_fleet_operator_reconciles_total{result="ok"})') >= 1
    wanted = prom.query("ollama_fleet_operator_pool_model_wanted")
    assert {s["metric"]["model"] for s in wanted} == {
        "llama3.2:1b",
        "nomic-embed-text:latest",
        MISSING,
    }
    # the balancer names the two servable ones the same way: the alert's join works
    routable = prom.query("ollama_fleet_model_routable_backends > 0")
    assert {"llama3.2:1b", "nomic-embed-text:latest"} <= {s["metric"]["model"] for s in routable}


def test_requests_per_key(observed_fleet: ObservedFleet) -> None:
    result = observed_fleet.prometheus.query(
        "sum by (client, status) (ollama_fleet_client_requests_total)"
    )
    seen = {(s["metric"]["client"], s["metric"]["status"]): float(s["value"][1]) for s in result}
    assert seen[("team-a", "200")] == 4 + 3, seen  # llama each round, qwen three times
    assert seen[("team-b", "200")] == 4
    assert seen[("team-b", "404")] == 4
    assert seen[("team-b", "500")] == 3
    # refusals are counted too: per key where the key is known, else as anonymous
    assert seen[("anonymous", "401")] == 4
    assert seen[("team-c", "200")] == 1 and seen[("team-c", "429")] == 7
    assert {client for client, _ in seen} == {*KEYS, "team-c", "anonymous"}
    assert sum(seen.values()) == observed_fleet.sent


def test_usage_per_key_and_tenant(observed_fleet: ObservedFleet) -> None:
    """The usage counters add up to what the answers told their clients, per key and tenant
    header, through all three APIs; the recording rule folds them into one figure a day."""
    prom = observed_fleet.prometheus

    def by_tenant(expr: str) -> dict[tuple[str, str], float]:
        return {
            (s["metric"]["client"], s["metric"]["tenant"]): float(s["value"][1])
            for s in prom.query(expr)
        }

    tokens = by_tenant(
        "sum by (client, tenant) (ollama_fleet_usage_prompt_tokens_total)"
        " + sum by (client, tenant) (ollama_fleet_usage_generated_tokens_total)"
    )
    for label, told in observed_fleet.usage.items():
        assert told > 0
        assert tokens[label] == told, (label, tokens)
    requests = by_tenant("sum by (client, tenant) (ollama_fleet_usage_requests_total)")
    assert requests[("team-d", "acme")] == requests[("team-d", "globex")] == 2 * 4
    assert requests[("team-d", "none")] == 2 * 4
    slots = by_tenant("sum by (client, tenant) (ollama_fleet_usage_slot_seconds_total)")
    assert all(slots[label] > 0 for label in observed_fleet.usage)
    counted = {
        s["metric"]["counted"] for s in prom.query("ollama_fleet_usage_generated_tokens_total")
    }
    assert counted == {"reported"}  # every answer here reported its usage
    daily = prom.wait_for(
        'ollama_fleet:usage_tokens:increase1d{client="team-d", tenant="acme"}', bool
    )
    assert float(daily[0]["value"][1]) > 0
