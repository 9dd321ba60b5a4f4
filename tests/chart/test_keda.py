"""The KEDA ScaledObject of the chart (off by default) and the operator's demand wiring.

The rendered ScaledObject is checked against KEDA's own CRD, the reference copy in
``../shared/reference/keda/`` beside the clone (its README: Apache-2.0, not to be copied
into the project, meant for exactly this): offline against the CRD's openAPIV3Schema, and
on the real kube-apiserver, which serves the CRD and must accept the object.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ollama_balancer.metrics import FLEET_DEMAND_RATIO
from tests.chart.chart import (
    ROOT,
    container,
    env_of,
    find,
    find_all,
    helm_path,
    render,
    run_helm,
    template_args,
    validate_modelpools,
)
from tests.kube.cluster import KubeCluster, install_crd

KEDA_CRD = ROOT.parent / "shared" / "reference" / "keda" / "keda.sh_scaledobjects.yaml"
KEDA = [
    "ollama.autoscaling.keda.enabled=true",
    "ollama.autoscaling.keda.prometheusServerAddress=http://prometheus-operated.monitoring:9090",
]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


def _keda_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _cel_rules(schema: Any) -> list[str]:
    """The CEL rules (x-kubernetes-validations) anywhere in the schema."""
    found: list[str] = []
    if isinstance(schema, dict):
        found += [v["rule"] for v in schema.get("x-kubernetes-validations") or ()]
        for value in schema.values():
            found += _cel_rules(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _cel_rules(value)
    return found


def _validate(obj: dict[str, Any]) -> list[str]:
    """Errors of ``obj`` against KEDA's schema (OpenAPI v3.0 is JSON Schema draft 4's
    dialect), plus the CRD's one CEL rule, which a 1.20 API server does not evaluate."""
    validator = jsonschema.Draft4Validator(_keda_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    rules = _cel_rules(_keda_schema())
    assert len(rules) == 1 and "self.minReplicaCount <=" in rules[0], rules  # what we check:
    spec = obj.get("spec") or {}
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append("spec: minReplicaCount must be <= maxReplicaCount")
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
    assert "0.8 is not of type 'string'" in errors
    assert "'name' is a required property" in errors
    assert "minReplicaCount must be <=" in errors


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
    assert (settings.demand_interval_seconds, settings.demand_window_seconds) == (5.0, 60.0)
    assert settings.release_keep_alive_seconds == 300.0
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


# ---- the real API server ----------------------------------------------------------------
@pytest.mark.kube
def test_kube_apiserver_accepts_the_scaled_object(
    helm: str, kube_cluster: KubeCluster, kube_api: client.ApiClient, kube_namespace: str
) -> None:
    install_crd(kube_api, KEDA_CRD)
    so = find(render(helm, sets=KEDA, namespace=kube_namespace), "ScaledObject", "-ollama")
    co = client.CustomObjectsApi(kube_api)
    created: Any = co.create_namespaced_custom_object(
        "keda.sh", "v1alpha1", kube_namespace, "scaledobjects", so
    )
    assert created["spec"]["triggers"] == so["spec"]["triggers"]
    # ... and refuses what breaks KEDA's schema
    bad = yaml.safe_load(yaml.safe_dump(so))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 0.8
    with pytest.raises(ApiException) as info:
        co.create_namespaced_custom_object(
            "keda.sh", "v1alpha1", kube_namespace, "scaledobjects", bad
        )
    assert info.value.status == 422
    assert "threshold" in (info.value.body or "")


def test_crd_is_reference_data_not_copied() -> None:
    """KEDA's CRD is read from the shared reference copy, never vendored here."""
    assert KEDA_CRD.is_file(), f"{KEDA_CRD} (shared/ beside the clone)"
    for where in ("charts", "manifests", "tests", "docs"):
        copies = list((ROOT / where).rglob("keda.sh_scaledobjects.yaml"))
        assert copies == [], copies
    assert "Apache-2.0" in (KEDA_CRD.parent / "README.md").read_text()


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
