"""values.schema.json and the chart's own checks reject bad values with a clear message
(helm's error output is asserted, as a user would read it)."""

from __future__ import annotations

import pytest

from tests.harness.chart import CHART, helm_path, run_helm, template_args

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"

CASES = [
    # (--set or --set-string value, expected message)
    ("ollama.numParallel=0", "ollama.numParallel: Must be greater than or equal to 1"),
    (
        "balancer.logLevel=loud",
        'balancer.logLevel: balancer.logLevel must be one of the following: "debug", "info"',
    ),
    ("balancer.replica=3", "balancer: Additional property replica is not allowed"),
    ("operator.replicas=-1", "operator.replicas: Must be greater than or equal to 0"),
    (
        "operator.leaderElection.leaseSeconds=1",
        "operator.leaderElection.leaseSeconds: Must be greater than or equal to 3",
    ),
    ("operator.registryMirrors=mirror:5000", "operator.registryMirrors: Does not match pattern"),
    ("string:ollama.gpu.count=one", "ollama.gpu.count: Invalid type. Expected: integer"),
    ("ollama.keepAlive=soon", "ollama.keepAlive: Does not match pattern"),
    ("existingFleet.discovery=consul", "existingFleet.discovery: existingFleet.discovery must be"),
    ("balancer.service.port=70000", "balancer.service.port: Must be less than or equal to 65535"),
    ("modelPools[0].name=Chat_1", "modelPools.0.name: Does not match pattern"),
    # API keys: on needs a source (existingSecret or keys); bad types and raw keys refused
    ("balancer.auth.enabled=true", "balancer.auth.existingSecret: String length must be greater"),
    ("string:balancer.auth.enabled=yes", "balancer.auth.enabled: Invalid type. Expected: boolean"),
    ("balancer.auth.existingSecret=Bad_Name", "balancer.auth.existingSecret: Does not match"),
    ("balancer.auth.secretKey=a/b", "balancer.auth.secretKey: Does not match pattern"),
    ("balancer.auth.keys=plenty", "balancer.auth.keys: Invalid type. Expected: array"),
    ("balancer.auth.keys[0].key=sk-raw", "balancer.auth.keys.0: Additional property key is not"),
    ("balancer.auth.keys[0].key_sha256=abc", "balancer.auth.keys.0.key_sha256: Does not match"),
    (
        "string:balancer.auth.keys[0].max_concurrent=4",
        "balancer.auth.keys.0.max_concurrent: Invalid type. Expected: integer",
    ),
    (
        "balancer.auth.keys[0].admin=1",
        "balancer.auth.keys.0.admin: Invalid type. Expected: boolean",
    ),
    ("balancer.auth.token=x", "balancer.auth: Additional property token is not allowed"),
    # day-2 options
    ("balancer.opsPort=0", "balancer.opsPort: Must be greater than or equal to 1"),
    ("operator.metricsPort=70000", "operator.metricsPort: Must be less than or equal to 65535"),
    ("ollama.gpu.vendor=intel", "ollama.gpu.vendor: ollama.gpu.vendor must be one of"),
    (
        "balancer.ingress.hosts[0].paths[0].pathType=Regex",
        "balancer.ingress.hosts.0.paths.0.pathType: balancer.ingress.hosts.0.paths.0.pathType must",
    ),
    ("balancer.httpRoute.pathPrefix=v1", "balancer.httpRoute.pathPrefix: Does not match pattern"),
    ("prometheusRule.disabled[0]=cold", "prometheusRule.disabled.0: Does not match pattern"),
    ("prometheusRule.alert=x", "prometheusRule: Additional property alert is not allowed"),
    (
        "balancer.topologySpreadConstraints[0].maxSkew=1",
        "balancer.topologySpreadConstraints.0: topologyKey is required",
    ),
    ("string:operator.extraArgs=--x", "operator.extraArgs: Invalid type. Expected: array"),
]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@pytest.mark.parametrize(("setting", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["template", "lint"])
def test_schema_rejects(helm: str, command: str, setting: str, message: str) -> None:
    flag = "--set"
    if setting.startswith("string:"):
        flag, setting = "--set-string", setting.removeprefix("string:")
    args = [command, *(["fleet"] if command == "template" else []), str(CHART), flag, setting]
    if setting.startswith("modelPools"):
        args += ["--set", "modelPools[0].spec.models[0].name=x"]
    if setting.startswith("balancer.auth.keys[0]."):
        args += ["--set", "balancer.auth.keys[0].name=a"]
    result = run_helm(helm, args)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert SCHEMA_ERROR in output, output
    assert message in output, output


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["ollama.enabled=false", "existingFleet.discovery=dns"],
            "existingFleet.dnsName is required when existingFleet.discovery=dns",
        ),
        (
            ["ollama.enabled=false", "existingFleet.discovery=static"],
            "existingFleet.backends is required when existingFleet.discovery=static",
        ),
        (
            ["balancer.autoscaling.enabled=true", "balancer.autoscaling.minReplicas=9"],
            "balancer.autoscaling.minReplicas must not exceed maxReplicas",
        ),
        (["balancer.opsPort=11434"], "balancer.opsPort must differ from the model API port"),
        (["operator.metricsPort=8080"], "operator.metricsPort must differ from the operator's"),
        (
            ["operator.metricsPort=0", "operator.serviceMonitor.enabled=true"],
            "operator.serviceMonitor.enabled needs operator.metricsPort",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(helm: str, sets: list[str], message: str) -> None:
    result = run_helm(helm, template_args(sets=sets))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_operator_replicas_above_one_need_leader_election(helm: str) -> None:
    assert run_helm(helm, template_args(sets=["operator.replicas=2"])).returncode == 0
    result = run_helm(
        helm, template_args(sets=["operator.replicas=2", "operator.leaderElection.enabled=false"])
    )
    assert result.returncode != 0
    assert "operator.replicas: Must be less than or equal to 1" in result.stderr, result.stderr


def test_auth_enabled_with_one_source_passes(helm: str) -> None:
    for source in (
        ["balancer.auth.existingSecret=ollama-fleet-keys"],
        ["balancer.auth.keys[0].name=a", f"balancer.auth.keys[0].key_sha256=sha256:{'A' * 64}"],
    ):
        result = run_helm(helm, template_args(sets=["balancer.auth.enabled=true", *source]))
        assert result.returncode == 0, result.stderr


def test_good_values_pass(helm: str) -> None:
    sets = ["ollama.numParallel=8", "balancer.pdb.minAvailable=50%", "ollama.keepAlive=-1"]
    result = run_helm(helm, template_args(sets=sets))
    assert result.returncode == 0, result.stderr
