"""Locate Debian's ``prometheus`` and ``promtool`` (installed by .ci/tools.sh)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

__all__ = ["ALERT_TESTS", "ROOT", "RULES", "prometheus_tool"]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "ollama-fleet" / "files" / "prometheus-rules.yaml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yaml"


def prometheus_tool(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Path of ``prometheus`` or ``promtool``; FAILS the test (never skips) when missing."""
    env = os.environ if environ is None else environ
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        pytest.fail(f"{name} not found: run `bash .ci/tools.sh` (Debian package prometheus)")
    return found
