"""The release path: .ci/package-charts.sh (the release workflow's `helm package` step) makes
charts that lint, render and validate from the .tgz, and .ci/release_targets.py sends the
image and charts where values.yaml says."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.harness.chart import ROOT, helm_path, run_helm, validate_builtin

VERSION = "0.1.0"  # the tag a release of today's tree would carry


def _release_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "release_targets", ROOT / ".ci/release_targets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci/package-charts.sh"), f"v{VERSION}", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OLLAMA_FLEET_HELM": helm_path()},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {p.name.removesuffix(f"-{VERSION}.tgz"): p for p in out.glob("*.tgz")}


def test_both_charts_are_packaged(packaged: dict[str, Path]) -> None:
    assert sorted(packaged) == ["ollama-fleet", "ollama-fleet-crds"]
    with tarfile.open(packaged["ollama-fleet"]) as tar:
        names = set(tar.getnames())
        chart = yaml.safe_load(tar.extractfile("ollama-fleet/Chart.yaml").read())  # type: ignore[union-attr]
    for needed in (
        "ollama-fleet/values.yaml",
        "ollama-fleet/values.schema.json",
        "ollama-fleet/crds/modelpools.ollamafleet.io.yaml",
        "ollama-fleet/files/dashboard.json",
        "ollama-fleet/files/prometheus-rules.yaml",
        "ollama-fleet/templates/prometheusrule.yaml",
        "ollama-fleet/templates/tests/test-connection.yaml",
    ):
        assert needed in names, needed
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)
    with tarfile.open(packaged["ollama-fleet-crds"]) as tar:
        assert "ollama-fleet-crds/files/modelpools.ollamafleet.io.yaml" in tar.getnames()


def test_packaged_chart_renders_and_validates(packaged: dict[str, Path], tmp_path: Path) -> None:
    helm = helm_path()
    result = run_helm(
        helm,
        ["template", "fleet", str(packaged["ollama-fleet"]), "-n", "ai", "--kube-version",
         "1.30.0", "-f", str(ROOT / "tests/chart/values/day2.yaml")],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    objs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(result.stdout) if d]
    validate_builtin(objs, tmp_path)
    targets = _release_targets().targets(f"v{VERSION}")
    images = {
        c["image"]
        for o in objs
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    # the default image of the packaged chart is the one the workflow pushes
    assert images == {f"{targets['image']}:{VERSION}"}
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1 and rules[0]["spec"]["groups"]
    crds = run_helm(helm, ["template", "c", str(packaged["ollama-fleet-crds"])])
    assert crds.returncode == 0, crds.stderr
    assert crds.stdout.count("kind: CustomResourceDefinition") == 1


def test_release_targets_follow_values() -> None:
    rt = _release_targets()
    values = yaml.safe_load((ROOT / "charts/ollama-fleet/values.yaml").read_text())
    out = rt.targets(f"v{VERSION}")
    assert out["image"] == values["image"]["repository"]
    assert out["registry"] == values["image"]["repository"].split("/")[0]
    assert out["charts"].startswith(f"oci://{out['registry']}/")
    assert out["version"] == VERSION
    with pytest.raises(ValueError, match="does not match version"):
        rt.targets("v9.9.9")
    with pytest.raises(ValueError, match="is not a version"):
        rt.targets("latest")


def test_release_workflow_uses_the_tested_steps() -> None:
    doc = yaml.safe_load((ROOT / ".github/workflows/release.yaml").read_text())
    # PyYAML reads the key `on` as True
    assert doc[True]["push"]["tags"] == ["v*.*.*"]
    (job,) = doc["jobs"].values()
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert ".ci/release_targets.py" in runs and ".ci/package-charts.sh" in runs
    assert "helm push" in runs
    (build,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push")]
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert doc["permissions"]["packages"] == "write"
