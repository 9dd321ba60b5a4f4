"""Chart options for real clusters, each on and off: Ingress and HTTPRoute, the operator's
metrics Service and ServiceMonitor, the PrometheusRule, extra args/env/volumes, priority and
topology spread, AMD and MIG GPUs.  Rendered objects go through the real settings loaders
and argument parsers of the balancer and the operator, and the rendered alert rules through
``promtool check rules``.  (Every value set here is also validated against Kubernetes 1.30's
schemas and linted by tests/chart/test_render.py.)"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ollama_balancer.settings import add_arguments, load_settings
from tests.harness.chart import (
    EXAMPLES,
    VALUES,
    container,
    env_of,
    find,
    find_all,
    helm_path,
    render,
    selector_matches,
)
from tests.harness.promtool import RULES, prometheus_tool

Objs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@pytest.fixture(scope="module")
def day2(helm: str) -> Objs:
    return render(helm, [VALUES / "day2.yaml"])


@pytest.fixture(scope="module")
def defaults(helm: str) -> Objs:
    return render(helm)


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


# ---------------------------------------------------------------- Ingress, HTTPRoute


def test_ingress_routes_to_the_client_service_only(day2: Objs) -> None:
    ing = find(day2, "Ingress", "fleet-ollama-fleet")
    svc = find(day2, "Service", "fleet-ollama-fleet")
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-buffering": "off"}
    assert ing["spec"]["tls"] == [{"hosts": ["ollama.example.com"], "secretName": "ollama-tls"}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "ollama.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    assert "http" in [p["name"] for p in svc["spec"]["ports"]]


def test_httproute_attaches_the_client_service_to_a_gateway(day2: Objs) -> None:
    route = find(day2, "HTTPRoute", "fleet-ollama-fleet")
    svc = find(day2, "Service", "fleet-ollama-fleet")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] == [
        {"name": "public", "namespace": "gateways", "sectionName": "https"}
    ]
    assert spec["hostnames"] == ["ollama.example.com"]
    (rule,) = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    # Gateway API backendRefs name a Service and its port number
    assert rule["backendRefs"] == [
        {"name": svc["metadata"]["name"], "port": svc["spec"]["ports"][0]["port"]}
    ]
    assert set(spec) == {"parentRefs", "hostnames", "rules"}


# --------------------------------------------------------------- PrometheusRule


def _check_rules(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run(
        [prometheus_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheusrule_is_the_checked_file(helm: str, tmp_path: Path) -> None:
    objs = render(helm, sets=["prometheusRule.enabled=true"])
    rule = find(objs, "PrometheusRule", "fleet-ollama-fleet")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    _check_rules(rule["spec"]["groups"], tmp_path)


def test_prometheusrule_values(day2: Objs, tmp_path: Path) -> None:
    rule = find(day2, "PrometheusRule", "fleet-ollama-fleet")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    names = {a["alert"] for a in alerts}
    source = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert names == {r["alert"] for r in source if "alert" in r} - {"OllamaFleetColdLoadRate"}
    # recording rules are kept as the file has them: no alert labels, no runbook
    records = [r for r in rules if "record" in r]
    assert records == [r for r in source if "record" in r]
    for a in alerts:
        assert a["labels"]["team"] == "ml-platform"
        assert a["labels"]["severity"] in ("warning", "critical")  # kept from the file
        assert a["annotations"]["runbook_url"] == (
            f"https://wiki.example.com/ollama-fleet#{a['alert'].lower()}"
        )
        assert "{{ $" in a["annotations"]["summary"]  # reaches Prometheus untemplated
    _check_rules(rule["spec"]["groups"], tmp_path)


# ------------------------------------------------------------ operator metrics


def test_operator_metrics_port_service_and_servicemonitor(day2: Objs) -> None:
    from modelpool_operator.cli import configure
    from modelpool_operator.settings import OperatorSettings

    dep = find(day2, "Deployment", "-operator")
    c = container(dep, "operator")
    (port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(c["args"][1:])  # the real CLI, given the rendered args
    flags = {k: v for k, v in vars(args).items() if k != "log_level"}
    settings = OperatorSettings.from_sources(flags, env_of(c))
    assert settings.process.metrics_port == port["containerPort"] == 9191
    assert settings.actions.pulls_per_pod == 5  # operator.extraArgs
    svc = find(day2, "Service", "-operator-metrics")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9191, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert selector_matches(svc["spec"]["selector"], _pod_labels(dep))
    sm = find(day2, "ServiceMonitor", "-operator")
    assert selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert not selector_matches(
        sm["spec"]["selector"]["matchLabels"],
        find(day2, "Service", "-balancer-ops")["metadata"]["labels"],
    )
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]


def test_operator_metrics_on_by_default_and_off_with_port_zero(defaults: Objs, helm: str) -> None:
    c = container(find(defaults, "Deployment", "-operator"), "operator")
    assert env_of(c)["OLLAMA_FLEET_OPERATOR_METRICS_PORT"] == "9090"
    assert find(defaults, "Service", "-operator-metrics")
    assert not find_all(defaults, "ServiceMonitor")
    off = render(helm, sets=["operator.metricsPort=0"])
    c = container(find(off, "Deployment", "-operator"), "operator")
    assert "OLLAMA_FLEET_OPERATOR_METRICS_PORT" not in env_of(c)
    assert [p["name"] for p in c["ports"]] == ["liveness"]
    assert not [o for o in off if o["metadata"]["name"].endswith("-operator-metrics")]


# ----------------------------------------------------- extras and scheduling


def test_balancer_extras_reach_the_real_settings(day2: Objs) -> None:
    dep = find(day2, "Deployment", "-balancer")
    c = container(dep, "balancer")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(c["args"][1:])
    settings = load_settings(args, env_of(c), yaml_text="{}")
    assert settings.routing.auto_pull is True  # extraArgs
    assert settings.routing.affinity_bound == 1.5
    assert settings.polling.interval == 3  # extraEnv
    assert {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in c["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in _pod_spec(dep)["volumes"]


@pytest.mark.parametrize(
    ("kind", "suffix", "priority"),
    [
        ("Deployment", "-balancer", "platform-critical"),
        ("Deployment", "-operator", "platform-critical"),
        ("StatefulSet", "-ollama", "gpu-workloads"),
    ],
)
def test_priority_and_spread_on_every_workload(
    day2: Objs, kind: str, suffix: str, priority: str
) -> None:
    workload = find(day2, kind, suffix)
    spec = _pod_spec(workload)
    assert spec["priorityClassName"] == priority
    (constraint,) = spec["topologySpreadConstraints"]
    # no labelSelector given: the chart spreads the workload's own pods
    assert constraint["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    assert selector_matches(constraint["labelSelector"]["matchLabels"], _pod_labels(workload))
    assert constraint["maxSkew"] == 1 and constraint["whenUnsatisfiable"]


def test_extra_volumes_of_operator_and_ollama(day2: Objs) -> None:
    op = find(day2, "Deployment", "-operator")
    assert {"name": "scratch", "mountPath": "/scratch"} in container(op, "operator")["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in _pod_spec(op)["volumes"]
    sts = find(day2, "StatefulSet", "-ollama")
    assert {"name": "shm", "mountPath": "/dev/shm"} in container(sts, "ollama")["volumeMounts"]
    # persistence on: the model store stays a claim template, the extra volume sits beside it
    assert [v["name"] for v in _pod_spec(sts)["volumes"]] == ["shm"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["models"]


def test_ops_port_policy_only_when_asked(helm: str) -> None:
    objs = render(helm, sets=["balancer.networkPolicy.enabled=true"])
    (rule,) = find(objs, "NetworkPolicy", "-balancer")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


# ------------------------------------------------------------------------ GPUs


@pytest.mark.parametrize(
    ("files", "sets", "image", "resource"),
    [
        pytest.param([], [], "ollama/ollama:0.13.3", "nvidia.com/gpu", id="nvidia by default"),
        pytest.param(
            [EXAMPLES / "values-amd-rocm.yaml"],
            [],
            "ollama/ollama:0.13.3-rocm",
            "amd.com/gpu",
            id="amd: ROCm image",
        ),
        pytest.param(
            [],
            ["ollama.gpu.vendor=amd", "ollama.image.tag=0.12.0-rocm"],
            "ollama/ollama:0.12.0-rocm",
            "amd.com/gpu",
            id="amd: a -rocm tag is kept",
        ),
        pytest.param(
            [EXAMPLES / "values-nvidia-mig.yaml"],
            [],
            "ollama/ollama:0.13.3",
            "nvidia.com/mig-1g.10gb",
            id="nvidia MIG slice",
        ),
    ],
)
def test_gpu_vendor_and_resource(
    helm: str, files: list[Path], sets: list[str], image: str, resource: str
) -> None:
    objs = render(helm, files, sets)
    c = container(find(objs, "StatefulSet", "-ollama"), "ollama")
    assert c["image"] == image
    assert c["resources"]["limits"][resource] == 1
    assert c["resources"]["requests"][resource] == 1
    others = {"nvidia.com/gpu", "amd.com/gpu", "nvidia.com/mig-1g.10gb"} - {resource}
    assert not others & set(c["resources"]["limits"])


def test_extras_off_by_default(defaults: Objs) -> None:
    bal = container(find(defaults, "Deployment", "-balancer"), "balancer")
    assert bal["args"] == ["balancer", "--config", "/etc/ollama-fleet/balancer.yaml"]
    assert [m["name"] for m in bal["volumeMounts"]] == ["config", "tmp"]
    op = find(defaults, "Deployment", "-operator")
    assert container(op, "operator")["args"] == [
        "operator", "--log-format", "json", "--log-level", "INFO"
    ]  # fmt: skip
    assert [v["name"] for v in _pod_spec(op)["volumes"]] == ["tmp"]
    sts = find(defaults, "StatefulSet", "-ollama")
    assert "args" not in container(sts, "ollama")  # the image's own `serve`
    assert "volumes" not in _pod_spec(sts)  # persistence on: the claim template only
    assert not find_all(defaults, "Ingress") and not find_all(defaults, "HTTPRoute")


def test_ollama_extra_args_follow_serve(helm: str) -> None:
    objs = render(helm, sets=["ollama.extraArgs[0]=--experimental"])
    c = container(find(objs, "StatefulSet", "-ollama"), "ollama")
    assert c["args"] == ["serve", "--experimental"]  # the image's entrypoint is `ollama`
