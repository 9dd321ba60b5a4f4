"""Tables for what the operator tells people: verdicts, name errors, status, Event identity."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelpool_operator.events import bump_patch, event_body, event_key
from modelpool_operator.plan import plan
from modelpool_operator.spec import PoolSpec, SpecError, explain_invalid_name, parse_pool_spec
from modelpool_operator.state import (
    Action,
    ActionKind,
    Activity,
    Observation,
    Owned,
    PodState,
    Priority,
    Resident,
)
from modelpool_operator.status import build_status, describe_activity
from modelpool_operator.verdicts import blocked_problem, verdict
from ollama_wire.models import InstalledModel
from ollama_wire.names import InvalidModelName, parse

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEL = {"matchLabels": {"app": "ollama"}}
PULL, LOAD = ActionKind.PULL, ActionKind.LOAD


@pytest.mark.parametrize(
    ("kind", "status", "message", "expected"),
    [
        pytest.param(PULL, 500, "pull model manifest: file does not exist", "ModelNotFound",
                     id="unknown model (in-stream)"),
        pytest.param(PULL, 500, "pull model manifest: unauthorized: access denied",
                     "Unauthorized", id="private model"),
        pytest.param(PULL, 400, "invalid model name", "InvalidModelName", id="bad name"),
        pytest.param(PULL, 500, "pull model manifest: 503: service unavailable", None,
                     id="registry down: transient"),
        pytest.param(PULL, 0, "ClientConnectorError: refused", None, id="pod down: transient"),
        pytest.param(LOAD, 404, "model 'x' not found", None, id="load 404: not pulled yet"),
        pytest.param(LOAD, 500, "timed out waiting for llama-server to start", None,
                     id="load timeout: transient"),
    ],
)  # fmt: skip
def test_verdicts(kind: ActionKind, status: int, message: str, expected: str | None) -> None:
    assert verdict(kind, status, message) == expected


def test_blocked_problems_say_what_to_do() -> None:
    nf = blocked_problem("ModelNotFound", "llama3.9:8b", "k", "manifest unknown")
    assert nf.reason == "ModelNotFound" and "check the name and tag" in nf.message
    auth = blocked_problem("Unauthorized", "acme/x:1b", "k", "unauthorized: access denied")
    assert "key that may pull it" in auth.message
    assert "not retried until the spec changes" in nf.message + auth.message
    bad = blocked_problem("InvalidModelName", "a/b/c/d", "k", "invalid model name")
    assert "4 '/'-separated parts; at most 3" in bad.message


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("", "the name is empty", id="empty"),
        pytest.param(" llama3", "whitespace", id="whitespace"),
        pytest.param("https://ollama.com/llama3", "no URL scheme", id="url"),
        pytest.param("a/b/c/d", "4 '/'-separated parts; at most 3", id="too many parts"),
        pytest.param("a//b", "an empty part", id="empty part"),
        pytest.param("my.org/llama3", "the namespace 'my.org' contains '.'", id="dot in namespace"),
        pytest.param("-llama3", "the model '-llama3' must start with", id="leading dash"),
        pytest.param("llama3:", "an empty tag", id="empty tag"),
        pytest.param("llama3:8b!", "the tag '8b!' contains '!'", id="bad tag char"),
        pytest.param("x" * 81, "longer than 80 characters", id="long model"),
    ],
)
def test_invalid_names_are_explained(name: str, why: str) -> None:
    with pytest.raises(InvalidModelName):
        parse(name)
    assert why in explain_invalid_name(name)


def test_an_invalid_name_in_a_spec_says_why() -> None:
    with pytest.raises(SpecError) as info:
        parse_pool_spec({"selector": SEL, "models": [{"name": "my.org/llama3"}]})
    assert str(info.value).startswith("spec.models[0].name: invalid model name 'my.org/llama3'")
    assert "no dots" in str(info.value)


def _pool(**model: object) -> tuple[PoolSpec, str]:
    spec = parse_pool_spec({"selector": SEL, "models": [{"name": "a", **model}]})
    return spec, spec.models[0].key


def test_status_counts_only_copies_that_match_and_says_why() -> None:
    spec, key = _pool(options={"num_ctx": 4096})
    drifted = Resident("a:latest", 1, pinned=False, context_length=2048)
    obs = Observation(
        pods=(
            PodState(
                "p0",
                "http://p0",
                installed={key: InstalledModel("a:latest", 1)},
                resident={key: drifted},
            ),
        ),
        existing=frozenset({"p0"}),
    )
    ledger = (Owned("p0", key, "a", loaded=True),)
    result = plan(spec, obs, ledger)
    status = build_status(
        spec=spec,
        generation=2,
        obs=obs,
        plan=result,
        ledger=ledger,
        now=NOW,
        activities=[Activity(result.actions[0], running=True)],
    )
    assert status["models"][0]["loaded"] == 0 and status["loadedReplicas"] == "0/1"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert "runs with num_ctx 2048, not the pool's 4096" in conds["Ready"]["message"]
    assert (conds["Reconciling"]["status"], conds["Reconciling"]["reason"]) == ("True", "Loading")
    assert "reload: num_ctx differs" in conds["Reconciling"]["message"]


def _action(kind: ActionKind, priority: Priority = Priority.LOAD) -> Action:
    return Action(kind, "p0", "u", "k", "big:8b", "pull for load", priority=priority)


@pytest.mark.parametrize(
    ("activity", "text"),
    [
        pytest.param(Activity(_action(PULL), True, 3 * 2**30, 8 * 2**30),
                     "pull big:8b on p0 (pull for load): 37% of 8.0 GiB", id="pull progress"),
        pytest.param(Activity(_action(PULL), True), "pull big:8b on p0 (pull for load): running",
                     id="pull, no total yet"),
        pytest.param(Activity(_action(LOAD)), "load big:8b on p0 (pull for load): queued",
                     id="queued"),
    ],
)  # fmt: skip
def test_activity_texts(activity: Activity, text: str) -> None:
    assert describe_activity(activity) == text


def test_event_identity_aggregates_repeats_and_survives_restarts() -> None:
    pool = {
        "apiVersion": "ollamafleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"},
    }
    a = event_key(pool, "Warning", "ModelNotFound", "x: no such model", "op-a")
    again = event_key(pool, "Warning", "ModelNotFound", "x: no such model", "op-a")
    other = event_key(pool, "Warning", "ModelNotFound", "y: no such model", "op-a")
    by_b = event_key(pool, "Warning", "ModelNotFound", "x: no such model", "op-b")
    assert a.event_name == again.event_name  # same report: the same Event, count bumped
    assert len({a.event_name, other.event_name, by_b.event_name}) == 3
    assert a.event_name.startswith("chat.")
    body = event_body(a, pool, "ollama-fleet-operator", NOW)
    assert body["involvedObject"] == {
        "apiVersion": "ollamafleet.io/v1alpha1", "kind": "ModelPool", "name": "chat",
        "namespace": "ml", "uid": "u-1", "resourceVersion": "7",
    }  # fmt: skip
    assert (body["count"], body["firstTimestamp"], body["reportingInstance"]) == (
        1, "2026-01-02T03:04:05Z", "op-a",
    )  # fmt: skip
    assert bump_patch(4, NOW) == {"count": 4, "lastTimestamp": "2026-01-02T03:04:05Z"}
    long = event_key(pool, "Normal", "Loaded", "m" * 5000, "op-a")
    assert len(long.message) == 1000  # the API server's cap
