"""Tables for the pure spec parser, status builder and settings."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from modelpool_operator.observe import pod_info
from modelpool_operator.plan import plan
from modelpool_operator.settings import OperatorSettings
from modelpool_operator.spec import LabelSelector, SpecError, parse_pool_spec, parse_quantity
from modelpool_operator.state import Observation, Owned, PodState, Resident
from modelpool_operator.status import build_status, merge_conditions
from ollama_wire.models import InstalledModel

SEL = {"matchLabels": {"app": "ollama"}}


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        pytest.param({"name": "llama3"}, "replicas", 1, id="replicas default 1"),
        pytest.param({"name": "llama3", "replicas": "all"}, "replicas", None, id="all"),
        pytest.param({"name": "llama3"}, "keep_alive", math.inf, id="keepAlive default forever"),
        pytest.param({"name": "llama3", "keepAlive": "-1"}, "keep_alive", math.inf, id="'-1'"),
        pytest.param({"name": "llama3", "keepAlive": "1h30m"}, "keep_alive", 5400.0, id="go"),
        pytest.param({"name": "llama3", "keepAlive": 600}, "keep_alive", 600.0, id="seconds"),
        pytest.param(
            {"name": "Llama3"}, "key", "registry.ollama.ai/library/llama3:latest", id="key"
        ),
        pytest.param({"name": "llama3"}, "pull", "all", id="pull default all"),
        pytest.param(
            {"name": "e", "options": {"num_ctx": 8192}},
            "options",
            (("num_ctx", 8192),),
            id="options",
        ),
    ],
)
def test_spec_values(model: dict[str, Any], field: str, value: Any) -> None:
    spec = parse_pool_spec({"selector": SEL, "models": [model]})
    assert getattr(spec.models[0], field) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"selector": {}, "models": []}, "must select something", id="empty selector"),
        pytest.param(
            {"selector": SEL, "models": [{"name": "a/b/c/d"}]}, "invalid model name", id="name"
        ),
        pytest.param(
            {"selector": SEL, "models": [{"name": "llama3"}, {"name": "library/llama3:latest"}]},
            "are the same model",
            id="same model twice",
        ),
        pytest.param(
            {"selector": SEL, "models": [{"name": "a", "replicas": -1}]}, "replicas", id="neg"
        ),
        pytest.param(
            {"selector": SEL, "models": [{"name": "a", "keepAlive": "0"}]},
            "use replicas: 0",
            id="ka0",
        ),
        pytest.param(
            {"selector": SEL, "models": [{"name": "a", "keepAlive": "5 min"}]}, "keepAlive", id="ka"
        ),
        pytest.param(
            {"selector": SEL, "models": [], "defaultVramBytes": "lots"}, "quantity", id="vram"
        ),
        pytest.param(
            {"selector": SEL, "models": [], "defaultVramBytes": [24]},
            "not a quantity",
            id="vram not a string or number",
        ),
        pytest.param(
            {
                "selector": {"matchExpressions": [{"key": "k", "operator": "In", "values": 5}]},
                "models": [],
            },
            "values: must be a list",
            id="selector values not a list",
        ),
    ],
)
def test_spec_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_pool_spec(raw)


def test_keep_alive_on_the_wire_is_a_number() -> None:
    spec = parse_pool_spec(
        {"selector": SEL, "models": [{"name": "a"}, {"name": "b", "keepAlive": "90m"}]}
    )
    # The JSON *string* "-1" is a 400 in Ollama; the number -1 means forever.
    assert [m.keep_alive_wire for m in spec.models] == [-1, 5400]


@pytest.mark.parametrize(
    ("text", "value"),
    [("24Gi", 24 * 2**30), ("80G", 80 * 10**9), ("1e9", 10**9), (1024, 1024), ("1.5Ki", 1536)],
)
def test_quantity(text: str | int, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("labels", "matches"),
    [
        ({"app": "ollama", "tier": "gpu"}, True),
        ({"app": "ollama", "tier": "cpu"}, False),
        ({}, False),
    ],
)
def test_selector(labels: dict[str, str], matches: bool) -> None:
    sel = LabelSelector(
        match_labels=(("app", "ollama"),),
        match_expressions=(("tier", "In", ("gpu",)), ("broken", "DoesNotExist", ())),
    )
    assert sel.matches(labels) is matches


def test_pod_info_reads_ip_port_readiness_node_and_vram() -> None:
    info = pod_info(
        {
            "metadata": {
                "name": "ollama-0",
                "namespace": "ns",
                "labels": {"app": "ollama"},
                "annotations": {"ollamafleet.io/vram-bytes": "24Gi"},
            },
            "spec": {
                "nodeName": "gpu-1",
                "containers": [{"ports": [{"name": "http", "containerPort": 8000}]}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    assert (info.url, info.node, info.vram_bytes, info.usable) == (
        "http://10.0.0.7:8000",
        "gpu-1",
        24 * 2**30,
        True,
    )


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_status_ready_counts_pods_and_conditions() -> None:
    spec = parse_pool_spec({"selector": SEL, "models": [{"name": "a", "replicas": 1}]})
    key = spec.models[0].key
    obs = Observation(
        pods=(
            PodState(
                "p0",
                "http://p0",
                installed={key: InstalledModel("a:latest", 1)},
                resident={key: Resident("a:latest", 1, pinned=True)},
            ),
            PodState("p1", "http://p1", installed={key: InstalledModel("a:latest", 1)}),
        ),
        existing=frozenset({"p0", "p1"}),
    )
    ledger = (Owned("p0", key, "a", loaded=True),)
    result = plan(spec, obs, ledger)
    status = build_status(
        spec=spec, generation=3, obs=obs, plan=result, ledger=result.ledger, now=NOW
    )
    assert status["readyModels"] == "1/1" and status["loadedReplicas"] == "1/1"
    assert status["observedGeneration"] == 3
    assert status["models"][0]["loadedOn"] == ["p0"]
    assert status["models"][0]["pulledOn"] == ["p0", "p1"]
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds == {
        "Ready": ("True", "AllModelsReady"),
        "Reconciling": ("False", "Reconciled"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["owned"] == [
        {
            "pod": "p0",
            "model": key,
            "name": "a",
            "loaded": True,
            "pulled": False,
            "embedding": False,
        }
    ]


def test_status_failures_make_it_degraded_not_ready() -> None:
    spec = parse_pool_spec({"selector": SEL, "models": []})
    empty = Observation()
    status = build_status(
        spec=spec,
        generation=1,
        obs=empty,
        plan=plan(spec, empty),
        ledger=(),
        failures=["load a on p0 (load): boom"],
        now=NOW,
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ActionFailed")
    assert "boom" in degraded["message"]


def test_transition_time_moves_only_on_flips() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    same = merge_conditions(old, [{"type": "Ready", "status": "True", "reason": "x"}], NOW)
    flip = merge_conditions(old, [{"type": "Ready", "status": "False", "reason": "y"}], NOW)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert flip[0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_settings_flags_over_env_over_defaults() -> None:
    env = {
        "OLLAMA_FLEET_OPERATOR_NAMESPACES": "a,b",
        "OLLAMA_FLEET_OPERATOR_RESYNC_SECONDS": "30",
        "OLLAMA_FLEET_OPERATOR_STANDALONE": "true",
        "OLLAMA_FLEET_OPERATOR_DEFAULT_VRAM_BYTES": "16Gi",
        "KUBECONFIG": "/k/config:/other",
    }
    s = OperatorSettings.from_sources({"resync_seconds": 5.0}, env)
    assert s.watch.namespaces == ("a", "b")
    assert s.watch.resync_seconds == 5.0
    assert s.leader.standalone is True
    assert s.sizing.default_vram_bytes == 16 * 2**30
    assert s.cluster.kubeconfig == "/k/config"
    assert OperatorSettings.from_sources({}, {}).watch.watched_namespaces == ("default",)
    with pytest.raises(ValueError, match="exclusive"):
        OperatorSettings.from_sources({"all_namespaces": True, "namespaces": ("x",)}, {})
