"""The KEDA ScaledObject of the chart (off by default) and the operator's demand wiring.

The rendered ScaledObject is checked against KEDA's schema as the npm registry serves it:
``@kubernetes-models/keda`` (pinned in ``.ci/npm/package-lock.json``, installed by
``.ci/tools.sh``) is a validator generated from KEDA's own CRD (its ``openAPIV3Schema``), run
here by node.  Nothing is read from outside the repository and its registries.  KEDA's one CEL
rule (min ≤ max replicas), which no generated schema carries, is checked beside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ollama_balancer.metrics import FLEET_DEMAND_RATIO
from tests.harness.chart import (
    ROOT,
    container,
    env_of,
    find,
    find_all,
    helm_path,
    node_modules,
    render,
    run_helm,
    template_args,
    validate_modelpools,
)

VALIDATOR = Path(__file__).with_name("keda_validate.cjs")
KEDA = [
    "ollama.autoscaling.keda.enabled=true",
    "ollama.autoscaling.keda.prometheusServerAddress=http://prometheus-operated.monitoring:9090",
]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


def _validate_all(objs: list[dict[str, Any]]) -> list[list[str]]:
    """Errors of each object against KEDA's schema (the npm validator), plus the CRD's one
    CEL rule, which the generated validator does not carry."""
    node = shutil.which("node")
    assert node, "node not found (.ci/tools.sh installs it with npm)"
    proc = subprocess.run(
        [node, str(VALIDATOR)],
        input=json.dumps(objs),
        capture_output=True,
        text=True,
        timeout=60,
        env={"NODE_PATH": str(node_modules()), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    found: list[list[str]] = json.loads(proc.stdout)
    for obj, errors in zip(objs, found, strict=True):
        spec = obj.get("spec") or {}
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            errors.append("spec: minReplicaCount must be <= maxReplicaCount")
    return found


def _validate(obj: dict[str, Any]) -> list[str]:
    (errors,) = _validate_all([obj])
    return errors


def test_off_by_default(helm: str) -> None:
    objs = render(helm)
    assert not find_all(objs, "ScaledObject")
    sts = find(objs, "StatefulSet", "-ollama")
    assert sts["spec"]["replicas"] == 2


def test_scaled_object_renders_and_validates_against_kedas_crd(helm: str) -> None:
    objs = render(helm, sets=KEDA)
    so = find(objs, "ScaledObject", "-ollama")
    sts = find(objs, "StatefulSet", "-ollama")
    assert "replicas" not in sts["spec"]  # KEDA's HPA owns the count; helm upgrade keeps it
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"]["namespace"] == "ai"
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 4)
    (trigger,) = so["spec"]["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "Value")
    meta = trigger["metadata"]
    assert meta["query"] == f'sum({FLEET_DEMAND_RATIO}{{namespace="ai"}})'
    assert (meta["threshold"], meta["activationThreshold"]) == ("0.8", "0")
    assert all(isinstance(v, str) for v in meta.values())  # metadata: map of strings
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert _validate(so) == []


def test_scale_to_zero_and_a_query_of_ones_own(helm: str) -> None:
    query = "sum(ollama_fleet_model_demand) / clamp_min(sum(ollama_fleet_model_slots), 1)"
    objs = render(
        helm,
        sets=[
            *KEDA,
            "ollama.autoscaling.keda.minReplicas=0",
            "ollama.autoscaling.keda.query=" + query.replace(",", "\\,"),  # helm --set escape
            "ollama.autoscaling.keda.threshold=1.5",
        ],
    )
    so = find(objs, "ScaledObject", "-ollama")
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["triggers"][0]["metadata"]["query"] == query
    assert _validate(so) == []


def test_the_validator_is_strict(helm: str) -> None:
    """What KEDA's schema refuses is refused here (so the checks above mean something)."""
    so = find(render(helm, sets=KEDA), "ScaledObject", "-ollama")
    bad = yaml.safe_load(yaml.safe_dump(so))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 0.8  # a number, not a string
    del bad["spec"]["scaleTargetRef"]["name"]
    bad["spec"]["minReplicaCount"] = 5
    errors = " ".join(_validate(bad))
    assert "/spec/triggers/0/metadata/threshold: must be string" in errors
    assert "/spec/scaleTargetRef: must have required property name" in errors
    assert "minReplicaCount must be <=" in errors
    wrong_kind = {**so, "apiVersion": "keda.sh/v1beta9"}
    assert _validate(wrong_kind)  # the validator knows KEDA's group and version


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["ollama.autoscaling.keda.enabled=true"],
            "needs ollama.autoscaling.keda.prometheusServerAddress",
        ),
        (
            [*KEDA, "ollama.autoscaling.keda.minReplicas=5"],
            "ollama.autoscaling.keda.minReplicas must not exceed maxReplicas",
        ),
        ([*KEDA, "ollama.enabled=false", "existingFleet.backends[0]=http://a:11434",
          "existingFleet.discovery=static"], "it needs ollama.enabled=true"),
        (["ollama.autoscaling.keda.threshold=high"], "threshold: Does not match pattern"),
        (["operator.demand.service=a/b/c"], "operator.demand.service: Does not match pattern"),
    ],
)  # fmt: skip
def test_bad_values_fail_the_render(helm: str, sets: list[str], message: str) -> None:
    result = run_helm(helm, template_args(sets=sets))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# ---- the operator follows this release's balancer ---------------------------------------
def test_operator_polls_this_releases_balancer(helm: str) -> None:
    from modelpool_operator.settings import OperatorSettings

    objs = render(helm)
    settings = OperatorSettings.from_sources(
        {}, env_of(container(find(objs, "Deployment", "-operator"), "operator"))
    )
    ops = find(objs, "Service", "-balancer-ops")
    assert settings.balancer_ref == ("ai", ops["metadata"]["name"])
    assert [p["name"] for p in ops["spec"]["ports"]] == ["ops"]  # the port the feed picks
    assert (settings.demand.demand_interval_seconds, settings.demand.demand_window_seconds) == (
        5.0,
        60.0,
    )
    assert settings.demand.release_keep_alive_seconds == 300.0
    # least RBAC: `get` on that one Endpoints object
    role = find(objs, "Role", "-operator-demand")
    assert role["metadata"]["namespace"] == "ai"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["endpoints"],
            "resourceNames": [ops["metadata"]["name"]],
            "verbs": ["get"],
        }
    ]
    binding = find(objs, "RoleBinding", "-operator-demand")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize(
    ("sets", "ref"),
    [
        (["operator.demand.enabled=false"], None),
        (["balancer.enabled=false", "ollama.enabled=true"], None),
        (["operator.demand.service=gpu/other-ops"], ("gpu", "other-ops")),
        (["operator.demand.service=other-ops"], ("ai", "other-ops")),
    ],
)
def test_operator_demand_source_settings(
    helm: str, sets: list[str], ref: tuple[str, str] | None
) -> None:
    from modelpool_operator.settings import OperatorSettings

    objs = render(helm, sets=sets)
    c = container(find(objs, "Deployment", "-operator"), "operator")
    assert OperatorSettings.from_sources({}, env_of(c)).balancer_ref == ref
    roles = [o for o in find_all(objs, "Role") if o["metadata"]["name"].endswith("-demand")]
    if ref is None:
        assert not roles
    else:
        (role,) = roles
        assert role["metadata"]["namespace"] == ref[0]
        assert role["rules"][0]["resourceNames"] == [ref[1]]


def test_nothing_outside_the_repository() -> None:
    """KEDA's schema comes from a registry package, not from a folder beside the clone; and
    no test, tool or document of the repository names a path outside it."""
    for where in ("charts", "manifests", "tests", "docs"):
        copies = list((ROOT / where).rglob("keda.sh_scaledobjects.yaml"))
        assert copies == [], copies
    lock = json.loads((ROOT / ".ci/npm/package-lock.json").read_text())
    assert lock["packages"]["node_modules/@kubernetes-models/keda"]["integrity"]


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        ({"name": "a", "maxReplicas": 2, "targetRequests": 0.5}, True),
        ({"name": "a", "minReplicas": 0, "maxReplicas": 2}, True),
        ({"name": "a", "replicas": 1, "maxReplicas": 2}, False),
        ({"name": "a", "scaleDownDelaySeconds": 60}, False),
        ({"name": "a", "maxReplicas": 2, "targetRequests": 0}, False),
    ],
)
def test_modelpool_values_validate_autoscaling_as_the_api_server_does(
    model: dict[str, Any], ok: bool
) -> None:
    """Chart values' ModelPools are checked against the CRD the way 1.20 checks them."""
    pool = {
        "apiVersion": "ollamafleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "models": [model]},
    }
    if ok:
        assert validate_modelpools([pool]) == 1
    else:
        with pytest.raises(AssertionError):
            validate_modelpools([pool])
