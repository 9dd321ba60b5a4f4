"""Helpers for the chart tests: find helm, render the chart, pick objects, validate them.

Also the generator of ``manifests/install.yaml``: ``python -m tests.harness.chart --write``
renders it again (the drift test fails until it is regenerated and committed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ollama-fleet"
CRD = ROOT / "manifests" / "crds" / "modelpools.ollamafleet.io.yaml"
INSTALL_YAML = ROOT / "manifests" / "install.yaml"
EXAMPLES = ROOT / "manifests" / "examples"
VALUES = ROOT / "tests" / "chart" / "values"
HELM_VERSION = "v3.10.1"
KUBE_VERSION = "1.30.0"  # what `helm template` assumes: today's APIs (policy/v1, autoscaling/v2)

INSTALL_NAMESPACE = "ollama-fleet"
INSTALL_HEADER = f"""\
# ollama-fleet: everything the Helm chart installs with its default values, as plain
# manifests (CRD included), for clusters without Helm:
#
#   kubectl apply -f manifests/crds/     # first: the ModelPool CRD
#   kubectl create namespace {INSTALL_NAMESPACE}
#   kubectl apply -n {INSTALL_NAMESPACE} -f manifests/install.yaml
#
# Generated from charts/ollama-fleet; do not edit.  Regenerate with
#   python -m tests.harness.chart --write
# (tests/chart/test_render.py fails when this file and the chart disagree.)
# Upgrades: `kubectl apply` again (CRD changes included).
"""


class HelmMissing(RuntimeError):
    pass


def _cache(env: Mapping[str, str]) -> Path:
    return Path(
        env.get("OLLAMA_FLEET_CACHE") or Path(env.get("HOME", "~")) / ".cache/ollama-fleet"
    ).expanduser()


def node_modules(environ: Mapping[str, str] | None = None) -> Path:
    """The npm packages of ``.ci/npm`` (``OLLAMA_FLEET_NODE_MODULES``, set by .ci/tools.sh)."""
    env = os.environ if environ is None else environ
    found = Path(env.get("OLLAMA_FLEET_NODE_MODULES") or _cache(env) / "npm/node_modules")
    if not found.is_dir():
        raise HelmMissing(f"npm packages not found at {found}: run `bash .ci/tools.sh`")
    return found


def helm_path(environ: Mapping[str, str] | None = None) -> str:
    """helm from ``OLLAMA_FLEET_HELM`` (set by .ci/tools.sh), else the npm packages' cache."""
    env = os.environ if environ is None else environ
    helm = env.get("OLLAMA_FLEET_HELM") or str(_cache(env) / "npm/node_modules/.bin/helm")
    if not os.access(helm, os.X_OK):
        raise HelmMissing(f"helm not found at {helm}: run `bash .ci/tools.sh`")
    return helm


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def run_helm(helm: str, args: Sequence[str], *, timeout: float = 120) -> HelmResult:
    proc = subprocess.run(
        [helm, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/ollama-fleet-helm-cache"},
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def template_args(
    values: Iterable[Path] = (),
    sets: Iterable[str] = (),
    *,
    release: str = "fleet",
    namespace: str = "ai",
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


def render(
    helm: str,
    values: Iterable[Path] = (),
    sets: Iterable[str] = (),
    *,
    release: str = "fleet",
    namespace: str = "ai",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` → the list of objects (fails the test on a helm error)."""
    result = run_helm(
        helm, template_args(values, sets, release=release, namespace=namespace, extra=extra)
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(objs: Iterable[Mapping[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [
        o for o in objs if o["kind"] == kind and str(o["metadata"]["name"]).endswith(name_suffix)
    ]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[kinds(found)]}"
    return dict(found[0])


def find_all(objs: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(o) for o in objs if o["kind"] == kind]


def kinds(objs: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)


def container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    spec = workload["spec"]
    spec = spec["template"]["spec"] if "template" in spec else spec
    for c in spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


def env_of(c: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def parse_selector(text: str) -> dict[str, str]:
    """An equality-based label selector string (``a=b,c=d``) as a dict."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        assert sep and "!" not in key, f"not an equality selector: {text}"
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------ validation


def kubernetes_validate_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "kubernetes_validate"]


#: Kinds not in Kubernetes' own schemas: checked otherwise (CRD schema, field checks).
CUSTOM_KINDS = {"ModelPool", "ServiceMonitor", "PrometheusRule", "HTTPRoute"}


def validate_builtin(objs: Sequence[Mapping[str, Any]], workdir: Path) -> None:
    """Every built-in object through ``kubernetes-validate --strict -k 1.30``."""
    builtin = [o for o in objs if o["kind"] not in CUSTOM_KINDS]
    assert builtin
    files = []
    for i, obj in enumerate(builtin):
        path = workdir / f"{i:03d}-{obj['kind']}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(dict(obj)))
        files.append(str(path))
    cmd = [*kubernetes_validate_cmd(), "--strict", "-k", "1.30", "--quiet", *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubernetes-validate:\n{proc.stdout}\n{proc.stderr}"


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def validate_modelpools(objs: Iterable[Mapping[str, Any]]) -> int:
    """Rendered ModelPools against the CRD's own openAPIV3Schema; returns how many."""
    import jsonschema

    # OpenAPI v3.0 schemas are JSON Schema draft 4's dialect (a boolean exclusiveMinimum).
    validator = jsonschema.Draft4Validator(crd_schema())
    n = 0
    for obj in objs:
        if obj["kind"] != "ModelPool":
            continue
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"ModelPool {obj['metadata']['name']}: {errors}"
        n += 1
    return n


# --------------------------------------------------------------------- install.yaml


def render_install_yaml(helm: str) -> str:
    result = run_helm(
        helm,
        [
            "template",
            "ollama-fleet",
            str(CHART),
            "--namespace",
            INSTALL_NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--include-crds",
            "--skip-tests",
        ],
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return INSTALL_HEADER + result.stdout


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["--write"]:
        print("usage: python -m tests.harness.chart --write", file=sys.stderr)
        return 2
    INSTALL_YAML.write_text(render_install_yaml(helm_path()))
    print(f"wrote {INSTALL_YAML.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
