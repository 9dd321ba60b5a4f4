"""The Helm chart, rendered offline: lint, templates for several value sets, every object
validated against Kubernetes 1.30's schemas (kubernetes-validate --strict) and the
ModelPools against the CRD's own schema; the rendered settings fed to the real settings
loaders and discovery code of the balancer and the operator.
"""

from __future__ import annotations

import base64
import http.server
import json
import math
import posixpath
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpool_operator import metrics as operator_metrics
from ollama_balancer import metrics
from ollama_balancer.app import OPS_PATHS
from ollama_balancer.core.auth import hash_key, parse_keys
from ollama_balancer.core.pods import (
    ANNOTATION_NUM_PARALLEL,
    ANNOTATION_VRAM_BYTES,
    PodRules,
    backend_from_pod,
)
from ollama_balancer.core.routes import spec_for
from ollama_balancer.settings import BalancerSettings, load_settings
from ollama_wire.tracing import tracing_enabled, tracing_from_env
from tests.harness.chart import (
    CHART,
    CRD,
    EXAMPLES,
    INSTALL_YAML,
    VALUES,
    container,
    env_of,
    find,
    find_all,
    helm_path,
    kinds,
    parse_selector,
    render,
    render_install_yaml,
    run_helm,
    selector_matches,
    template_args,
    validate_builtin,
    validate_modelpools,
)

VALUE_SETS: dict[str, list[Path]] = {
    "defaults": [],
    "existing-fleet": [EXAMPLES / "values-existing-fleet.yaml"],
    "existing-fleet-dns": [EXAMPLES / "values-existing-fleet-dns.yaml"],
    "production": [EXAMPLES / "values-production.yaml"],
    "no-operator": [VALUES / "no-operator.yaml"],
    "ha": [VALUES / "ha.yaml"],
    "servicemonitor": [VALUES / "servicemonitor.yaml"],
    "kube-install": [VALUES / "kube-install.yaml"],
    "auth-keys": [VALUES / "auth-keys.yaml"],
    "day2": [VALUES / "day2.yaml"],
    "amd-rocm": [EXAMPLES / "values-amd-rocm.yaml"],
    "nvidia-mig": [EXAMPLES / "values-nvidia-mig.yaml"],
    "tracing": [VALUES / "tracing.yaml"],
}


@pytest.fixture(scope="session")
def helm() -> str:
    return helm_path()


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, files) for name, files in VALUE_SETS.items()}


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


# ------------------------------------------------------------------- lint & validate


def needs_key(path: str) -> bool:
    """Whether the balancer asks a key for ``path`` (its route table says so)."""
    spec = spec_for(path)
    return spec is None or spec.needs_key


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_strict(helm: str, name: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for f in VALUE_SETS[name]:
        args += ["-f", str(f)]
    result = run_helm(helm, args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_objects_validate(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    objs = rendered[name]
    validate_builtin(objs, tmp_path)
    validate_modelpools(objs)
    for obj in objs:
        assert obj["metadata"]["name"], obj
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace"), f"{obj['kind']} without namespace"


def test_kubernetes_validate_rejects_unknown_fields(tmp_path: Path) -> None:
    """The validator is really strict (so the test above means something)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"x": 1}}
    with pytest.raises(AssertionError, match="x' was unexpected"):
        validate_builtin([bad], tmp_path)


def test_modelpool_schema_rejects_bad_pool() -> None:
    pool = {
        "apiVersion": "ollamafleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "models": [{"name": "llama3.2:3b", "pull": "sometimes"}]},
    }
    with pytest.raises(AssertionError, match="sometimes"):
        validate_modelpools([pool])


# ---------------------------------------------------------------------- the balancer


def test_balancer_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["defaults"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dep = find(objs, "Deployment", "-balancer")
    assert dep["spec"]["replicas"] == 2
    c = container(dep, "balancer")
    assert c["args"][0] == "balancer"
    assert c["ports"] == [
        {"name": "http", "containerPort": 11434, "protocol": "TCP"},
        {"name": "ops", "containerPort": values["balancer"]["opsPort"], "protocol": "TCP"},
    ]
    # probes on the ops port, on paths it serves (never the model API, never behind keys)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    settings = load_settings(environ=env_of(c))
    assert settings.listen.ops_port == values["balancer"]["opsPort"]
    assert not settings.security.hide_pod_names and not values["balancer"]["hidePodNames"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in OPS_PATHS
    drain = values["balancer"]["drain"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == [
        "sleep",
        str(drain["preStopSleepSeconds"]),
    ]
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == (
        drain["preStopSleepSeconds"] + drain["drainDelaySeconds"] + drain["drainGraceSeconds"] + 5
    )
    # security
    psc, csc = spec["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and isinstance(psc["runAsUser"], int) and psc["runAsUser"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # the Service: ClusterIP on 11434, selecting exactly the balancer pods
    svc = find(objs, "Service", "fleet-ollama-fleet")
    assert svc["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in svc["spec"]["ports"]] == [11434]  # no ops port for clients
    assert selector_matches(svc["spec"]["selector"], _pod_labels(dep))
    op = find(objs, "Deployment", "-operator")
    assert not selector_matches(svc["spec"]["selector"], _pod_labels(op))
    ops = find(objs, "Service", "-balancer-ops")
    assert ops["spec"]["ports"] == [
        {
            "name": "ops",
            "port": values["balancer"]["opsPort"],
            "targetPort": "ops",
            "protocol": "TCP",
        }
    ]
    assert selector_matches(ops["spec"]["selector"], _pod_labels(dep))
    # every new option off by default
    for kind in ("Ingress", "HTTPRoute", "PrometheusRule", "ServiceMonitor"):
        assert not find_all(objs, kind), kind
    for workload in (dep, op, find(objs, "StatefulSet", "-ollama")):
        spec = workload["spec"]["template"]["spec"]
        assert "priorityClassName" not in spec and "topologySpreadConstraints" not in spec


def test_balancer_env_is_accepted_by_the_real_settings_loader(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The chart's OLLAMA_FLEET_* variables and config file load without error and mean
    what the values say."""
    for name, objs in rendered.items():
        if not any(
            o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-balancer") for o in objs
        ):
            continue
        dep = find(objs, "Deployment", "-balancer")
        cm = find(objs, "ConfigMap", "-balancer")
        env = env_of(container(dep, "balancer"))
        settings = load_settings(environ=env, yaml_text=cm["data"]["balancer.yaml"])
        assert settings.listen.host == "0.0.0.0" and settings.listen.port == 11434, name
        assert settings.process.drain_grace == float(env["OLLAMA_FLEET_DRAIN_GRACE"])
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        sleep = 0
        if "lifecycle" in container(dep, "balancer"):
            sleep = int(container(dep, "balancer")["lifecycle"]["preStop"]["exec"]["command"][1])
        assert grace >= sleep + math.ceil(settings.process.drain_delay) + math.ceil(
            settings.process.drain_grace
        )


def test_production_config_reaches_the_balancer(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["production"]
    cm = find(objs, "ConfigMap", "-balancer")
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    settings = load_settings(environ=env, yaml_text=cm["data"]["balancer.yaml"])
    assert settings.proxy.first_byte_timeout == 600
    assert settings.process.drain_grace == 120
    assert settings.security.hide_pod_names  # off answers to clients, kept in the logs
    assert settings.discovery.default_slots == 4
    dep = find(objs, "Deployment", "-balancer")
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 10 + 0 + 120 + 5
    # only labelled clients (and the test pod) may call the balancer; monitoring reaches only
    # the ops port
    np = find(objs, "NetworkPolicy", "-balancer")
    assert selector_matches(np["spec"]["podSelector"]["matchLabels"], _pod_labels(dep))
    api, ops = np["spec"]["ingress"]
    assert api["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ops["ports"] == [{"port": "ops", "protocol": "TCP"}]
    assert api["from"][1]["podSelector"]["matchLabels"] == {"ollama-fleet-client": "true"}
    monitoring = {"namespaceSelector": {"matchLabels": {MONITORING_NS: "monitoring"}}}
    assert monitoring not in api["from"]
    assert ops["from"] == [monitoring]


MONITORING_NS = "kubernetes.io/metadata.name"

# ----------------------------------------------------------------------- API keys

AUTH_DIR = "/etc/ollama-fleet/auth"


def _auth_wiring(objs: list[dict[str, Any]]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(OLLAMA_FLEET_AUTH_FILE, its volumeMount, its volume) of the balancer Deployment."""
    dep = find(objs, "Deployment", "-balancer")
    c = container(dep, "balancer")
    path = env_of(c)["OLLAMA_FLEET_AUTH_FILE"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == posixpath.dirname(path)]
    (volume,) = [
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    return path, mount, volume


def test_auth_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("defaults", "ha", "servicemonitor", "existing-fleet"):
        objs = rendered[name]
        c = container(find(objs, "Deployment", "-balancer"), "balancer")
        assert "OLLAMA_FLEET_AUTH_FILE" not in env_of(c), name
        assert load_settings(environ=env_of(c)).security.auth_file == "", name
        assert not [m for m in c["volumeMounts"] if m["mountPath"].startswith(AUTH_DIR)], name
        assert not find_all(objs, "Secret"), name


def test_production_mounts_the_keys_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["production"]
    path, mount, volume = _auth_wiring(objs)
    assert path == f"{AUTH_DIR}/keys.yaml"
    # the whole Secret as a read-only directory: no subPath, so Secret updates reach the pod
    assert mount == {"name": "auth", "mountPath": AUTH_DIR, "readOnly": True}
    assert volume == {"name": "auth", "secret": {"secretName": "ollama-fleet-keys"}}
    # the user's Secret, not the chart's (the only chart Secret is the shared store's password)
    assert [s["metadata"]["name"] for s in find_all(objs, "Secret")] == [
        "fleet-ollama-fleet-shared-state"
    ]
    # the real settings loader takes the file from the rendered env and config file
    dep = find(objs, "Deployment", "-balancer")
    cm = find(objs, "ConfigMap", "-balancer")
    settings = load_settings(
        environ=env_of(container(dep, "balancer")), yaml_text=cm["data"]["balancer.yaml"]
    )
    assert settings.security.auth_file == path
    # probes stay on paths the balancer never asks a key for
    c = container(dep, "balancer")
    for probe in ("readinessProbe", "livenessProbe"):
        assert not needs_key(c[probe]["httpGet"]["path"]), probe
    sm = find(objs, "ServiceMonitor", "-balancer")
    assert all(not needs_key(e["path"]) for e in sm["spec"]["endpoints"])


def test_production_recipe_makes_a_valid_keys_file() -> None:
    """The commented recipe in values-production.yaml: its hash command is the real one and
    the keys.yaml it writes is accepted by the balancer's parser."""
    text = (EXAMPLES / "values-production.yaml").read_text()
    lines = [line.strip().removeprefix("#").removeprefix("   ") for line in text.splitlines()]
    start = lines.index("cat > keys.yaml <<EOF") + 1
    heredoc = "\n".join(lines[start : lines.index("EOF", start)])
    assert "| python -m ollama_balancer.auth hash" in text
    assert "kubectl -n ai create secret generic ollama-fleet-keys --from-file=keys.yaml" in text
    table = parse_keys(heredoc.replace("$HASH", hash_key("k")))
    assert [k.name for k in table.keys] == ["team-a"]
    assert table.lookup("k") is table.keys[0]


def test_auth_keys_from_values_render_a_secret_the_balancer_parses(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["auth-keys"]
    path, mount, volume = _auth_wiring(objs)
    assert path == f"{AUTH_DIR}/api-keys.yaml" and "subPath" not in mount
    assert mount["readOnly"] is True
    secret = find(objs, "Secret", "-api-keys")
    assert volume["secret"] == {"secretName": secret["metadata"]["name"]}
    assert list(secret["data"]) == [posixpath.basename(path)]
    content = base64.b64decode(secret["data"]["api-keys.yaml"]).decode()
    table = parse_keys(content)  # the balancer's own parser
    assert [k.name for k in table.keys] == ["team-a", "platform-admin"]
    team_a, admin = table.keys
    assert table.lookup("test-key-team-a") is team_a
    assert table.lookup("test-key-admin") is admin
    assert table.lookup("test-key-other") is None
    assert team_a.models == ("llama3*", "nomic-embed-text")
    assert (team_a.max_concurrent, team_a.requests_per_minute) == (4, 120)
    assert team_a.tokens_per_minute == 200000 and not team_a.admin
    assert admin.admin and admin.models == ("*",)
    assert "test-key" not in content  # hashes only
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    assert load_settings(environ=env).security.auth_file == path


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["existingSecret=mine", "keys[0].name=a", f"keys[0].key_sha256={'a' * 64}"],
            "balancer.auth: set either existingSecret or keys, not both",
        ),
        (
            [
                *("keys[0].name=a", f"keys[0].key_sha256={'a' * 64}"),
                *("keys[1].name=a", f"keys[1].key_sha256={'b' * 64}"),
            ],
            "balancer.auth.keys[1] (a): the name appears twice",
        ),
        (
            [
                *("keys[0].name=a", f"keys[0].key_sha256={'a' * 64}"),
                *("keys[1].name=b", f"keys[1].key_sha256=sha256:{'A' * 64}"),
            ],
            "balancer.auth.keys[1] (b): the same key_sha256 appears twice",
        ),
    ],
    ids=["both-sources", "duplicate-name", "duplicate-hash"],
)
def test_auth_keys_the_balancer_would_refuse_fail_the_render(
    helm: str, sets: list[str], message: str
) -> None:
    auth = ["balancer.auth.enabled=true", *(f"balancer.auth.{s}" for s in sets)]
    result = run_helm(helm, template_args(sets=auth))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# ---------------------------------------------------------------------- Ollama pods


def test_ollama_statefulset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["defaults"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["ollama"]
    sts = find(objs, "StatefulSet", "-ollama")
    c = container(sts, "ollama")
    assert c["image"] == f"ollama/ollama:{values['image']['tag']}"
    assert c["ports"] == [{"name": "http", "containerPort": 11434, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    env = env_of(c)
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert env["OLLAMA_NUM_PARALLEL"] == str(values["numParallel"])
    assert env["OLLAMA_MAX_LOADED_MODELS"] == str(values["maxLoadedModels"])
    assert env["OLLAMA_KEEP_ALIVE"] == values["keepAlive"]
    assert env["OLLAMA_CONTEXT_LENGTH"] == str(values["contextLength"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    spec = sts["spec"]["template"]["spec"]
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["automountServiceAccountToken"] is False
    assert {"name": "models", "mountPath": "/root/.ollama"} in c["volumeMounts"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "models"
    assert claim["spec"]["resources"]["requests"]["storage"] == values["persistence"]["size"]
    headless = find(objs, "Service", "-ollama")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert selector_matches(headless["spec"]["selector"], _pod_labels(sts))
    # a Service's selector picks Ollama pods only, never the balancer's
    assert not selector_matches(
        headless["spec"]["selector"], _pod_labels(find(objs, "Deployment", "-balancer"))
    )


def test_cpu_only_and_no_persistence(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["no-operator"]
    sts = find(objs, "StatefulSet", "-ollama")
    c = container(sts, "ollama")
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert "volumeClaimTemplates" not in sts["spec"]
    assert sts["spec"]["template"]["spec"]["volumes"] == [{"name": "models", "emptyDir": {}}]
    assert not find_all(objs, "NetworkPolicy")
    assert not [o for o in objs if "operator" in o["metadata"]["name"]], kinds(objs)
    assert not [o for o in objs if o["kind"] == "Pod"]  # tests.enabled=false


@pytest.mark.parametrize("name", ["defaults", "ha", "kube-install", "production"])
def test_balancer_learns_slots_from_the_same_value(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """The real discovery code, given an Ollama pod made from the StatefulSet template,
    routes to it with OLLAMA_NUM_PARALLEL slots on its port named http, and the balancer's
    selector picks it."""
    objs = rendered[name]
    sts = find(objs, "StatefulSet", "-ollama")
    template = sts["spec"]["template"]
    num_parallel = int(env_of(container(sts, "ollama"))["OLLAMA_NUM_PARALLEL"])
    assert template["metadata"]["annotations"][ANNOTATION_NUM_PARALLEL] == str(num_parallel)
    pod = {
        "metadata": {
            "name": "ollama-0",
            "namespace": "ai",
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
        },
        "spec": template["spec"],
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    settings = load_settings(environ=env)
    assert settings.discovery.kind == "kubernetes"
    assert settings.discovery.default_slots == num_parallel
    assert selector_matches(
        parse_selector(settings.discovery.kube_selector), pod["metadata"]["labels"]
    )
    assert settings.discovery.kube_namespaces == ("ai",)
    backend = backend_from_pod(
        pod,
        PodRules(
            default_port=settings.discovery.kube_port,
            default_slots=settings.discovery.default_slots,
        ),
    )
    assert backend is not None
    assert backend.slots == num_parallel
    assert backend.url == "http://10.1.2.3:11434"
    vram = template["metadata"]["annotations"].get(ANNOTATION_VRAM_BYTES)
    if vram:
        assert backend.vram_bytes > 0


def test_network_policy_admits_only_balancer_and_operator(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["defaults"]
    np = find(objs, "NetworkPolicy", "-ollama")
    sts = find(objs, "StatefulSet", "-ollama")
    assert selector_matches(np["spec"]["podSelector"]["matchLabels"], _pod_labels(sts))
    assert np["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = np["spec"]["ingress"]
    peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    admitted = {
        name
        for name in ("-balancer", "-operator")
        if any(selector_matches(p, _pod_labels(find(objs, "Deployment", name))) for p in peers)
    }
    assert admitted == {"-balancer", "-operator"}
    assert len(peers) == 2  # nobody else: no namespaceSelector, no empty podSelector
    assert all(p for p in peers)


# ----------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", ["defaults", "ha"])
def test_selectors_are_stable_labels_only(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """Selectors hold only name/instance/component: nothing that changes on upgrade."""
    allowed = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    for obj in rendered[name]:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            sel = obj["spec"]["selector"]["matchLabels"]
            assert set(sel) <= allowed, obj["metadata"]["name"]
            assert selector_matches(sel, _pod_labels(obj))
            assert "helm.sh/chart" in obj["metadata"]["labels"]
            assert "app.kubernetes.io/version" in obj["metadata"]["labels"]


# ------------------------------------------------------------------------ operator


def test_operator_deployment_and_least_rbac(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from modelpool_operator.settings import OperatorSettings

    objs = rendered["defaults"]
    dep = find(objs, "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    c = container(dep, "operator")
    assert c["args"][0] == "operator"
    settings = OperatorSettings.from_sources({}, env_of(c))
    assert settings.watch.namespaces == ("ai",)
    # leader election on: a Lease in the release namespace, the pod name as identity
    assert settings.leader.standalone is False
    assert (settings.leader.lease_name, settings.lease_home, settings.leader.lease_seconds) == (
        "ollama-fleet-operator", "ai", 10.0,
    )  # fmt: skip
    assert settings.sizing.manifest_lookup is True and settings.sizing.registry_mirrors == ()
    env = {e["name"]: e for e in c["env"]}
    assert env["OLLAMA_FLEET_OPERATOR_IDENTITY"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    lease = find(objs, "Role", "-operator-lease")
    assert lease["metadata"]["namespace"] == "ai"
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["ollama-fleet-operator"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    lease_binding = find(objs, "RoleBinding", "-operator-lease")
    assert lease_binding["roleRef"]["name"] == lease["metadata"]["name"]
    assert c["livenessProbe"]["httpGet"]["port"] == "liveness"
    assert settings.process.liveness and settings.process.liveness.endswith(":8080/healthz")
    role = find(objs, "Role", "-operator")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules[(("ollamafleet.io",), ("modelpools",))] >= {"get", "list", "watch", "patch"}
    assert rules[(("ollamafleet.io",), ("modelpools/status",))] >= {"patch"}
    assert rules[(("",), ("pods",))] == {"get", "list", "watch"}
    assert rules[(("",), ("events",))] == {"create", "get", "patch"}
    assert not any("kopf.dev" in groups for groups, _ in rules)
    for r in role["rules"]:
        assert "*" not in r["verbs"] and "*" not in r["resources"]
        assert not {"secrets", "configmaps"} & set(r["resources"])
    # cluster-scoped: only the reads kopf needs (CRD discovery, namespaces)
    cluster = find(objs, "ClusterRole", "-operator-cluster")
    assert {(r["resources"][0], tuple(r["verbs"])) for r in cluster["rules"]} == {
        ("customresourcedefinitions", ("list", "watch")),
        ("namespaces", ("list", "watch")),
    }
    binding = find(objs, "RoleBinding", "-operator")
    assert binding["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]
    # the balancer may only read pods
    brole = find(objs, "Role", "-balancer")
    assert brole["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    # the RBAC template explains every rule
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    block = text[text.index('define "ollama-fleet.operatorRules"') :]
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups"):
            assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {line}"


def test_operator_cluster_wide(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from modelpool_operator.settings import OperatorSettings

    objs = rendered["ha"]
    c = container(find(objs, "Deployment", "-operator"), "operator")
    assert OperatorSettings.from_sources({}, env_of(c)).watch.all_namespaces is True
    # two replicas, one acting: the Lease stays in the release namespace
    assert find(objs, "Deployment", "-operator")["spec"]["replicas"] == 2
    assert find(objs, "Role", "-operator-lease")["metadata"]["namespace"] == "ai"
    cluster = find(objs, "ClusterRole", "-operator-cluster")
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in cluster["rules"])
    role = find(objs, "ClusterRole", "-operator")
    assert any(r["resources"] == ["pods"] for r in role["rules"])
    assert (
        find(objs, "ClusterRoleBinding", "-operator")["roleRef"]["name"]
        == (role["metadata"]["name"])
    )
    assert not [
        o for o in objs if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator")
    ]


# ------------------------------------------------------------------- existing fleet


def test_existing_fleet_by_selector(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["existing-fleet"]
    assert not find_all(objs, "StatefulSet")
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    settings = load_settings(environ=env)
    assert settings.discovery.kind == "kubernetes"
    assert settings.discovery.kube_selector == "app=ollama,tier=gpu"
    assert settings.discovery.kube_namespaces == ("ai",)
    assert settings.discovery.default_slots == 4
    (role,) = [o for o in find_all(objs, "Role") if o["metadata"]["name"].endswith("balancer")]
    assert role["metadata"]["namespace"] == "ai"
    (pool,) = find_all(objs, "ModelPool")
    assert pool["spec"]["selector"]["matchLabels"] == {"app": "ollama", "tier": "gpu"}


def test_existing_fleet_by_dns_needs_no_api_access(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["existing-fleet-dns"]
    dep = find(objs, "Deployment", "-balancer")
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    settings = load_settings(environ=env_of(container(dep, "balancer")))
    assert settings.discovery.kind == "dns"
    assert settings.discovery.dns_name == "ollama-headless.ai.svc.cluster.local"
    assert settings.discovery.default_slots == 2
    assert not [o for o in objs if o["kind"] in ("Role", "ClusterRole", "StatefulSet")]
    assert not [o for o in objs if "operator" in o["metadata"]["name"]]


def test_existing_fleet_static(helm: str) -> None:
    objs = render(
        helm,
        sets=[
            "ollama.enabled=false",
            "operator.enabled=false",
            "existingFleet.discovery=static",
            "existingFleet.backends={a=http://10.0.0.5:11434,b=http://10.0.0.6:11434}",
        ],
    )
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    settings = load_settings(environ=env)
    assert [b.name for b in settings.discovery.static_backends()] == ["a", "b"]


# ------------------------------------------------------------------ HA, monitoring


def test_ha_pdb_hpa(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["ha"]
    dep = find(objs, "Deployment", "-balancer")
    assert "replicas" not in dep["spec"]  # the HPA owns it
    pdb = find(objs, "PodDisruptionBudget", "-balancer")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == "50%"
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], _pod_labels(dep))
    hpa = find(objs, "HorizontalPodAutoscaler", "-balancer")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 7 + 3 + 60 + 5


def test_servicemonitor_and_dashboard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["servicemonitor"]
    sm = find(objs, "ServiceMonitor", "-balancer")
    svc = find(objs, "Service", "fleet-ollama-fleet")
    ops = find(objs, "Service", "-balancer-ops")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    # the ServiceMonitor picks the ops Service only, and scrapes its ops port
    assert selector_matches(sm["spec"]["selector"]["matchLabels"], ops["metadata"]["labels"])
    assert not selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ai"]}
    assert sm["spec"]["endpoints"] == [{"port": "ops", "path": "/metrics", "interval": "15s"}]
    assert [p["name"] for p in ops["spec"]["ports"]] == ["ops"]
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]
    cm = find(objs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["ollama-fleet.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    known = {
        v
        for module in (metrics, operator_metrics)
        for k, v in vars(module).items()
        if k.isupper() and isinstance(v, str)
    }
    # metrics other issues add (tests/harness/dashboard.py lists their panels)
    known |= {"ollama_fleet_queue_wait_seconds", "ollama_fleet_shared_state_up"}
    used = {
        re.sub(r"_(bucket|count|sum)$", "", word)
        for e in exprs
        for word in re.findall(r"ollama_fleet_\w+", e)
    }
    for name in (
        "ollama_fleet_requests_total",
        "ollama_fleet_request_duration_seconds",
        "ollama_fleet_inflight_requests",
        "ollama_fleet_backend_up",
    ):
        assert name in used
    # every figure the scheduler exports has a panel (docs/queueing.md §9)
    scheduler = {
        metrics.CLASS_SEATS,
        metrics.CLASS_HELD,
        metrics.CLASS_BORROWED,
        metrics.CLASS_LENT,
        metrics.PREEMPTIONS,
        metrics.RESUMES,
        metrics.PREEMPTION_WASTE,
        metrics.ESTIMATE_ERROR,
    }
    assert scheduler <= used, scheduler - used
    assert used <= known, used - known


# ---------------------------------------------------------------------- ModelPools


def test_modelpools_from_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["ha"]
    pools = find_all(objs, "ModelPool")
    assert validate_modelpools(objs) == 1
    (pool,) = pools
    sts = find(objs, "StatefulSet", "-ollama")
    assert selector_matches(pool["spec"]["selector"]["matchLabels"], _pod_labels(sts))
    assert [m["name"] for m in pool["spec"]["models"]] == ["llama3.2:3b", "nomic-embed-text"]


def test_modelpool_needs_selector_with_existing_fleet(helm: str) -> None:
    sets = [
        "ollama.enabled=false",
        "modelPools[0].name=chat",
        "modelPools[0].spec.models[0].name=llama3.2:3b",
    ]
    result = run_helm(helm, template_args(sets=sets))
    assert result.returncode != 0
    assert "modelPools[0] (chat): spec.selector is required when ollama.enabled=false" in (
        result.stderr
    )


# ------------------------------------------------------- CRD, install.yaml, docs


def test_crd_is_the_same_file() -> None:
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD.name]
    assert sorted(p.name for p in CRD.parent.iterdir()) == [CRD.name]


def test_crd_upgrade_policy_documented() -> None:
    for path in (CHART / "Chart.yaml", CHART / "templates" / "NOTES.txt"):
        assert "kubectl apply -f manifests/crds/" in path.read_text(), path


def test_install_yaml_matches_chart(helm: str) -> None:
    expected = render_install_yaml(helm)
    assert INSTALL_YAML.read_text() == expected, (
        "manifests/install.yaml drifted from the chart: run `python -m tests.harness.chart --write`"
    )
    objs = [d for d in yaml.safe_load_all(expected) if d]
    assert objs[0]["kind"] == "CustomResourceDefinition"
    assert not [o for o in objs if o["kind"] == "Pod"]  # no test hook


SERVICE_URL = "http://fleet-ollama-fleet.ai.svc:11434"


def _run_hook(script: str, answers: dict[str, tuple[int, dict[str, Any]]]) -> int:
    """Run the hook's script against a local stand-in for the balancer's Service."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers.get(self.path, (404, {"error": "not found"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = f"http://127.0.0.1:{server.server_address[1]}"
        proc = subprocess.run(
            [sys.executable, "-c", script.replace(SERVICE_URL, local)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.returncode
    finally:
        server.shutdown()
        server.server_close()


def test_helm_test_hook(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["defaults"]
    pod = find(objs, "Pod", "-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(find(objs, "Deployment", "-balancer"), "balancer")["image"]
    script = c["command"][-1]
    assert SERVICE_URL in script
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert _run_hook(script, {"/api/version": (200, {"version": "0.13.3"})}) == 0
    assert _run_hook(script, {"/api/version": (503, {"error": "no backend"})}) != 0


def test_helm_test_hook_with_api_keys(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The hook has no key: with auth on it checks /readyz and that /api/version is 401."""
    script = find(rendered["production"], "Pod", "-test")["spec"]["containers"][0]["command"][-1]
    assert SERVICE_URL in script
    ready = (200, {"ready": True})
    assert _run_hook(script, {"/readyz": ready, "/api/version": (401, {"error": "x"})}) == 0
    assert _run_hook(script, {"/readyz": ready, "/api/version": (200, {"version": "1"})}) != 0
    assert _run_hook(script, {"/readyz": (503, {}), "/api/version": (401, {})}) != 0


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    props = schema.get("properties")
    if not props or schema.get("additionalProperties") is not False:
        return out
    if set(props) == {"requests", "limits"}:
        return out
    for key, sub in props.items():
        path = f"{prefix}{key}"
        out.add(path)
        out |= _schema_paths(sub, path + ".")
    return out


def test_every_value_documented_and_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    node = yaml.compose(text)
    documented: set[str] = set()
    undocumented: list[str] = []

    def walk(n: yaml.MappingNode, prefix: str, paths: set[str]) -> None:
        for key_node, value_node in n.value:
            path = prefix + key_node.value
            if path not in paths:
                continue
            documented.add(path)
            if not lines[key_node.start_mark.line - 1].strip().startswith("#"):
                undocumented.append(path)
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, path + ".", paths)

    paths = _schema_paths(schema) - {"global"}
    assert isinstance(node, yaml.MappingNode)
    walk(node, "", paths)
    assert not undocumented, f"values without a comment above them: {undocumented}"
    assert paths == documented, f"in the schema but not in values.yaml: {paths - documented}"
    # (values.yaml keys outside the schema: helm lint --strict fails on them, see above)


def test_notes_explain_next_steps() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for needle in ("port-forward", "/api/version", "kind: ModelPool", "helm test", "OLLAMA_HOST"):
        assert needle in notes


def test_notes_show_how_to_send_the_key() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    block = notes[notes.index("{{- if .Values.balancer.auth.enabled }}") :]
    assert 'Authorization: Bearer $KEY"' in block
    assert 'include "ollama-fleet.authSecretName"' in block


# ------------------------------------------------------------------- tracing


def test_tracing_renders_the_standard_otel_variables(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracing.* becomes OTEL_* on both components, which the real bootstrap starts from."""
    objs = rendered["tracing"]
    for kind, name, service in (
        ("Deployment", "balancer", "gateway"),
        ("Deployment", "operator", "ollama-fleet-operator"),
    ):
        c = container(find(objs, kind, name), name)
        env = env_of(c)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert env["OTEL_SERVICE_NAME"] == service
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
        attrs = env["OTEL_RESOURCE_ATTRIBUTES"]
        assert attrs.startswith("k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)")
        assert attrs.endswith(",deployment.environment=prod")
        by_name = {e["name"]: e for e in c["env"]}
        assert by_name["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
            "name": "otel-collector-key",
            "key": "headers",
        }
        # the downward-API variables are defined before the one that refers to them
        names = [e["name"] for e in c["env"]]
        assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        tracing = tracing_from_env(env, service_name="unused", scope="chart-test")
        assert tracing is not None and tracing.protocol == "grpc"
        tracing.shutdown()
    for name in ("balancer", "operator"):
        c = container(find(rendered["defaults"], "Deployment", name), name)
        assert not [e for e in c.get("env", []) if e["name"].startswith("OTEL_")]
        assert not tracing_enabled(env_of(c))


@pytest.mark.parametrize(
    ("values", "expect"),
    [
        pytest.param(
            {}, {"enabled": True, "policy": "reclaim", "critical_share": 0.2}, id="defaults"
        ),
        pytest.param(
            {"scheduler": {"enabled": True,
                           "classes": {"critical": {"share": 0.3, "lendable": 0.5,
                                                    "maxWait": 30}}}},
            {"enabled": True, "policy": "reclaim", "critical_share": 0.3, "critical_lendable": 0.5,
             "critical_max_wait": 30.0},
            id="a class's share",
        ),
        pytest.param(
            {"scheduler": {"enabled": True, "policy": "order", "maxPreemptions": 0}},
            {"enabled": True, "policy": "order", "max_preemptions": 0},
            id="order only",
        ),
        pytest.param(
            {"scheduler": {"enabled": False}, "config": {"queue": True}},
            {"enabled": True},
            id="config wins",
        ),
        pytest.param(
            {"scheduler": {"enabled": True}, "config": {"queue": False}},
            {"enabled": False},
            id="config wins over enabled",
        ),
    ],
)  # fmt: skip
def test_the_scheduler_block_reaches_the_balancer(
    tmp_path: Path, values: dict[str, Any], expect: dict[str, Any]
) -> None:
    """balancer.scheduler becomes the queue settings the real loader reads (config wins)."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"balancer": values}))
    objs = render(helm_path(), values=[path])
    cm = find(objs, "ConfigMap", "-balancer")
    env = env_of(container(find(objs, "Deployment", "-balancer"), "balancer"))
    queue = load_settings(environ=env, yaml_text=cm["data"]["balancer.yaml"]).queue
    policy = queue.scheduler()
    seen = {
        "enabled": queue.enabled,
        "policy": str(queue.policy),
        "max_preemptions": policy.max_preemptions,
        "critical_share": policy.critical.nominal,
        "critical_lendable": policy.critical.lendable,
        "critical_max_wait": policy.critical.max_wait,
    }
    assert {k: seen[k] for k in expect} == expect
    if not values:  # the chart's defaults are the balancer's
        assert policy == BalancerSettings.build().queue.scheduler()
        assert queue.enabled == BalancerSettings.build().queue.enabled


def test_a_bad_scheduler_class_fails_the_render(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"balancer": {"scheduler": {"classes": {"vip": {"share": 1}}}}}))
    result = run_helm(helm_path(), template_args(values=[path]))
    assert result.returncode != 0 and "vip" in result.stderr
