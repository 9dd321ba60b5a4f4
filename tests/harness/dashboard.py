"""The Grafana dashboard's queries, as a test executes them: its variables substituted.

``PENDING`` is the explicit list of panels whose metrics another issue adds; they are
executed (they must parse and evaluate) but not required to return data until then.
Nothing else may be on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD", "PENDING", "Query", "queries", "substitute", "variables"]

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/ollama-fleet/files/dashboard.json"

#: panel title -> the issue whose metric (or records) make it show data
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def queries(doc: Mapping[str, Any] | None = None) -> list[Query]:
    doc = doc or load()
    return [
        Query(p["title"], t["refId"], t["expr"])
        for p in doc["panels"]
        if p.get("type") != "row"
        for t in p.get("targets", ())
    ]


def variables(doc: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    doc = doc or load()
    return {v["name"]: v for v in doc["templating"]["list"]}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's substitution of ``$name`` / ``${name}`` (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", values[name], expr)
    return expr
