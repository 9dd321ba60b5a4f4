"""The alerting rules: ``promtool check rules``, ``promtool test rules`` (unit tests with input
series in alerts.test.yaml), a runbook entry per alert, and a unit test per alert."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from tests.harness.promtool import ALERT_TESTS, ROOT, RULES, prometheus_tool

RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/ollama-fleet/ollama-fleet/blob/main/docs/runbook.md#"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "record" in rule]


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [prometheus_tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = subprocess.run(
        [prometheus_tool("promtool"), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERT_TESTS.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_fires_in_a_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", ())
        if case.get("exp_alerts")
    }
    assert {a["alert"] for a in _alerts()} == fired


def test_every_recording_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    checked = {
        case["expr"]
        for test in tests
        for case in test.get("promql_expr_test", ())
        if case.get("exp_samples")
    }
    assert _records()
    assert {r["record"] for r in _records()} <= checked


def test_every_alert_has_a_runbook_entry() -> None:
    headings = set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    for alert in _alerts():
        name = alert["alert"]
        assert name.startswith("OllamaFleet"), name
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["runbook_url"] == RUNBOOK_URL + name.lower(), name
        assert name in headings, f"docs/runbook.md has no '## {name}'"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
