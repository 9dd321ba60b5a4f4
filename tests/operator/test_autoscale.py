"""The desired-count function for autoscaled ModelPool models (tables)."""

from __future__ import annotations

import itertools

import pytest

from modelpool_operator.autoscale import Autoscale, ScaleMemory, desired_replicas

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
    for step in range(60):
        now = step * 10.0
        demand = 4.4 if step % 2 else 3.5  # needs 3 copies, then 2 (at 90%)
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
