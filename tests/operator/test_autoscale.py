"""The desired-count function for autoscaled ModelPool models (tables)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from modelpool_operator.autoscale import Autoscale, ScaleMemory, desired_replicas
from modelpool_operator.scaling import (
    ScaleState,
    initial_state,
    state_from_status,
    state_to_status,
    step,
)
from modelpool_operator.spec import (
    DEFAULT_SCALE_DOWN_DELAY,
    DEFAULT_TARGET_REQUESTS,
    SpecError,
    parse_pool_spec,
)

SPEC = Autoscale(min_replicas=1, max_replicas=4, target_requests=2, scale_down_delay=60)
ZERO = Autoscale(min_replicas=0, max_replicas=3, target_requests=1, scale_down_delay=30)


@pytest.mark.parametrize(
    ("spec", "demand", "memory", "now", "replicas", "reason"),
    [
        pytest.param(SPEC, 0, ScaleMemory(1), 0, 1, "", id="idle at min stays"),
        pytest.param(SPEC, 2, ScaleMemory(1), 0, 1, "", id="at target: no change"),
        pytest.param(SPEC, 2.5, ScaleMemory(1), 0, 2, "scaled up 1→2", id="up promptly"),
        pytest.param(SPEC, 7, ScaleMemory(1), 0, 4, "scaled up 1→4", id="up in one step"),
        pytest.param(SPEC, 50, ScaleMemory(2), 0, 4, "scaled up 2→4", id="never above max"),
        pytest.param(SPEC, 0, ScaleMemory(0), 0, 1, "kept within 1..4", id="never below min"),
        pytest.param(SPEC, 0, ScaleMemory(9), 0, 4, "kept within 1..4", id="max lowered"),
        pytest.param(
            SPEC, 1, ScaleMemory(3, last_up=0, low_since=10), 30, 3, "", id="low: wait the delay"
        ),
        pytest.param(
            SPEC,
            1,
            ScaleMemory(3, last_up=0, low_since=10),
            70,
            1,
            "scaled down 3→1 after 60s",
            id="down after the delay",
        ),
        pytest.param(
            SPEC,
            1,
            ScaleMemory(3, last_up=50, low_since=0),
            70,
            3,
            "",
            id="not down within the delay of the last scale-up",
        ),
        pytest.param(
            SPEC,
            3.9,
            ScaleMemory(2, last_up=0, low_since=0),
            1000,
            2,
            "",
            id="hysteresis: 3.9 of 4 keeps two copies",
        ),
        pytest.param(
            SPEC,
            3.5,
            ScaleMemory(3, last_up=0, low_since=0),
            1000,
            2,
            "scaled down 3→2",
            id="3.5 fits two copies at 90%",
        ),
        pytest.param(
            SPEC,
            3.7,
            ScaleMemory(3, last_up=0, low_since=0),
            1000,
            3,
            "",
            id="3.7 would run two copies above 90%: keep three",
        ),
        pytest.param(
            ZERO,
            0,
            ScaleMemory(1, last_up=0, low_since=0),
            31,
            0,
            "scaled down 1→0",
            id="min 0: the last copy goes after the delay",
        ),
        pytest.param(ZERO, 0.2, ScaleMemory(0), 0, 1, "scaled up 0→1", id="from zero"),
    ],
)
def test_desired_replicas(
    spec: Autoscale, demand: float, memory: ScaleMemory, now: float, replicas: int, reason: str
) -> None:
    d = desired_replicas(spec, demand, memory, now)
    assert d.replicas == replicas
    assert d.reason.startswith(reason) if reason else d.reason == ""
    assert d.memory.replicas == replicas


def test_flapping_demand_never_oscillates() -> None:
    """Demand swinging around a boundary every 10 s: at most one change per delay window."""
    memory = ScaleMemory(2)
    changes: list[float] = []
    for i in range(60):
        now = i * 10.0
        demand = 4.4 if i % 2 else 3.5  # needs 3 copies, then 2 (at 90%)
        d = desired_replicas(SPEC, demand, memory, now)
        if d.replicas != memory.replicas:
            changes.append(now)
        memory = d.memory
    assert changes[0] == 10.0  # up promptly
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert all(g >= SPEC.scale_down_delay for g in gaps), changes
    assert memory.replicas == 3  # the low phases never lasted a whole delay


def test_low_demand_must_hold_without_a_break() -> None:
    memory = ScaleMemory(3, last_up=0)
    d = desired_replicas(SPEC, 1, memory, 100)  # low starts at 100
    d = desired_replicas(SPEC, 6, d.memory, 140)  # back up: the wait restarts
    d = desired_replicas(SPEC, 1, d.memory, 150)
    assert desired_replicas(SPEC, 1, d.memory, 200).replicas == 3
    assert desired_replicas(SPEC, 1, d.memory, 211).replicas == 1


# ---- the spec fields ----------------------------------------------------------------------
SEL = {"matchLabels": {"app": "ollama"}}


@pytest.mark.parametrize(
    ("model", "autoscale", "replicas"),
    [
        pytest.param({"name": "a"}, None, 1, id="fixed replicas by default"),
        pytest.param({"name": "a", "replicas": 3}, None, 3, id="fixed replicas"),
        pytest.param(
            {"name": "a", "maxReplicas": 4},
            Autoscale(1, 4, DEFAULT_TARGET_REQUESTS, DEFAULT_SCALE_DOWN_DELAY),
            1,
            id="defaults: min 1, target 1, delay 300",
        ),
        pytest.param(
            {
                "name": "a",
                "minReplicas": 0,
                "maxReplicas": 2,
                "targetRequests": 2.5,
                "scaleDownDelaySeconds": 30,
            },
            Autoscale(0, 2, 2.5, 30),
            0,
            id="all four; starts at min",
        ),
        pytest.param(
            {"name": "a", "minReplicas": 3, "maxReplicas": 3},
            Autoscale(3, 3, 1, 300),
            3,
            id="min=max",
        ),
        pytest.param(
            {"name": "a", "replicas": None, "maxReplicas": 2},
            Autoscale(1, 2, 1, 300),
            1,
            id="replicas null is not given",
        ),
    ],
)
def test_spec_autoscale(model: dict[str, Any], autoscale: Autoscale | None, replicas: int) -> None:
    m = parse_pool_spec({"selector": SEL, "models": [model]}).models[0]
    assert m.autoscale == autoscale
    assert m.replicas == replicas


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param(
            {"name": "a", "replicas": 2, "maxReplicas": 3},
            "spec.models[0]: replicas and maxReplicas are exclusive",
            id="both",
        ),
        pytest.param(
            {"name": "a", "replicas": "all", "minReplicas": 0, "maxReplicas": 3},
            "replicas and minReplicas, maxReplicas are exclusive",
            id="all and autoscaling",
        ),
        pytest.param(
            {"name": "a", "targetRequests": 2},
            "spec.models[0].maxReplicas: required with targetRequests",
            id="no max",
        ),
        pytest.param(
            {"name": "a", "minReplicas": 3, "maxReplicas": 2},
            "maxReplicas: 2 is below minReplicas 3",
            id="max below min",
        ),
        pytest.param(
            {"name": "a", "minReplicas": -1, "maxReplicas": 2}, "minReplicas: must be", id="neg min"
        ),
        pytest.param(
            {"name": "a", "maxReplicas": 0}, "maxReplicas: must be an integer >= 1", id="0"
        ),
        pytest.param({"name": "a", "maxReplicas": True}, "maxReplicas: must be", id="bool"),
        pytest.param(
            {"name": "a", "maxReplicas": 2, "targetRequests": 0}, "targetRequests", id="target 0"
        ),
        pytest.param(
            {"name": "a", "maxReplicas": 2, "targetRequests": "4"}, "targetRequests", id="text"
        ),
        pytest.param(
            {"name": "a", "maxReplicas": 2, "scaleDownDelaySeconds": -5},
            "scaleDownDelaySeconds: must be a number >= 0",
            id="negative delay",
        ),
    ],
)
def test_spec_autoscale_refused(model: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_pool_spec({"selector": SEL, "models": [model]})
    assert message in str(info.value)


# ---- one step with status round trip (scaling.py) -------------------------------------------
@pytest.mark.parametrize(
    ("state", "demand", "now", "replicas", "change", "message"),
    [
        pytest.param(ScaleState(ScaleMemory(1)), 5, 100, 3, "scaled up 1→3", "", id="up"),
        pytest.param(
            ScaleState(ScaleMemory(3, last_up=0)),
            1,
            100,
            3,
            None,
            "scaling down in 60s unless it rises",
            id="low: status says when",
        ),
        pytest.param(
            ScaleState(ScaleMemory(3, last_up=0, low_since=10)),
            None,
            100,
            3,
            None,
            "demand unknown (balancer down): holding at 3",
            id="unknown: hold, and the wait starts over",
        ),
        pytest.param(
            ScaleState(ScaleMemory(9)),
            None,
            100,
            4,
            "kept within 1..4 while demand is unknown",
            "demand unknown",
            id="unknown still obeys a lowered max",
        ),
    ],
)
def test_step(
    state: ScaleState,
    demand: float | None,
    now: float,
    replicas: int,
    change: str | None,
    message: str,
) -> None:
    new, happened = step(SPEC, state, demand, now, unknown="balancer down")
    assert new.replicas == replicas
    if change is None:
        assert happened is None
    else:
        assert happened is not None and happened.reason.startswith(change)
    assert message in new.message if message else new.message == ""
    if demand is None:
        assert new.memory.low_since is None and new.demand is None
    if happened:
        assert (happened.before, happened.after) == (state.replicas, replicas)
        assert new.changed_at == now and new.reason == happened.reason


def test_initial_state_starts_from_the_loaded_copies() -> None:
    assert initial_state(SPEC, 3).replicas == 3
    assert initial_state(SPEC, 0).replicas == 1
    assert initial_state(SPEC, 7).replicas == 4


def test_state_survives_status() -> None:
    """What a restarted operator reads back is what the last one decided."""
    start = 1_700_000_000.0
    state, _ = step(SPEC, ScaleState(ScaleMemory(1)), 5, start)
    state, _ = step(SPEC, state, 1, start + 10.25)
    raw = state_to_status(state)
    assert raw["replicas"] == 3 and raw["demand"] == 1
    assert raw["lowSince"] == "2023-11-14T22:13:30.250Z"
    assert raw["reason"].startswith("scaled up 1→3")
    back = state_from_status(json.loads(json.dumps(raw)))
    assert back == state
    # ... so the delay already waited is not waited again
    later, change = step(SPEC, back, 1, start + 10.25 + 60)
    assert change is not None and later.replicas == 1


@pytest.mark.parametrize(
    "raw",
    [None, "x", {}, {"replicas": -1}, {"replicas": "2"}, {"replicas": True}],
)
def test_unusable_status_starts_afresh(raw: Any) -> None:
    assert state_from_status(raw) is None


def test_bad_timestamps_are_forgotten() -> None:
    back = state_from_status({"replicas": 2, "lowSince": "yesterday", "demand": "lots"})
    assert back == ScaleState(ScaleMemory(2))
