"""Late binding on live pods: requests wait in the balancer, not inside Ollama.

These run the #13 discipline (``queue_policy=order``: class order and fair share, no shares,
no reclaim); the scheduler that makes room is tested in test_reclaim.py.

At saturation the emulator's runners never hold a waiting request while the balancer
queues; a critical request behind 50 batch ones is served next; a request cancelled while
queued never reaches a pod; a full queue answers 429 with Retry-After in the client's shape.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ollama_balancer.core.auth import hash_key
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
KEYS = f"""
keys:
  - name: ops
    key_sha256: {hash_key("ops-key")}
    priority: critical
  - name: bulk
    key_sha256: {hash_key("bulk-key")}
"""


def chat(i: int) -> dict[str, Any]:
    return {"model": M, "messages": [{"role": "user", "content": f"q{i}"}], "stream": False}


def runners(rig: Rig) -> list[Any]:
    return [r for n in rig.fleet.nodes for r in n.scheduler.runners.values()]


async def queued_rig(rig_factory: RigFactory, tmp_path: Path, **kw: Any) -> Rig:
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    rig = await rig_factory(
        nodes(("a", [M], [M]), num_parallel=2),
        default_slots=2,
        queue=True,
        queue_policy="order",  # the #13 discipline alone; test_reclaim.py: the scheduler
        auth_file=str(keys),
        **kw,
    )
    rig.node("a").faults.slow(300.0)  # the first answers hold their slots for about a second
    return rig


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def send(rig: Rig, n: int, first: int = 0) -> list[asyncio.Future[Any]]:
    """``n`` chats from the bulk key, in flight concurrently (numbered from ``first``)."""
    return [
        asyncio.ensure_future(rig.post("/api/chat", chat(first + i), headers=bearer("bulk-key")))
        for i in range(n)
    ]


def busy_slots(rig: Rig) -> int:
    return sum(r.in_flight for r in runners(rig))


async def test_at_saturation_requests_wait_in_the_balancer(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await queued_rig(rig_factory, tmp_path)
    room = rig.bal.proxy.waitroom
    assert room is not None
    sent = send(rig, 6)
    await rig.until(lambda: room.waiting() == 4 and busy_slots(rig) == 2)
    assert all(r.waiting == 0 for r in runners(rig))  # nothing queued inside "Ollama"
    fleet = await (await rig.session.get(rig.url + "/-/fleet")).json()
    assert fleet["queues"] == [
        {
            "model": M,
            "class": "standard",
            "waiting": 4,
            "expected_wait": fleet["queues"][0]["expected_wait"],
        }
    ]
    assert fleet["demand"] == {M: 6}  # this replica's: 2 in flight, 4 waiting
    exposition = await (await rig.session.get(rig.url + "/metrics")).text()
    assert f'ollama_fleet_queue_length{{class="standard",model="{M}"}} 4.0' in exposition
    assert f'ollama_fleet_model_demand{{model="{M}"}} 6.0' in exposition
    assert "ollama_fleet_demand_capacity_ratio 3.0" in exposition  # 6 for 2 warm slots
    rig.node("a").faults.clear()
    answers = await asyncio.gather(*sent)
    exposition = await (await rig.session.get(rig.url + "/metrics")).text()
    labels = f'class="standard",model="{M}",outcome="dispatched"'
    dispatched = f"ollama_fleet_queue_wait_seconds_count{{{labels}}}"
    assert f"{dispatched} 6.0" in exposition
    assert [a.status for a in answers] == [200] * 6
    waited = [float(a.headers["X-Queue-Wait"]) for a in answers]
    assert sum(1 for w in waited if w > 0) >= 4
    assert rig.node("a").stats.requests["/api/chat"] == 6


async def test_critical_behind_fifty_batch_is_served_next(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await queued_rig(rig_factory, tmp_path)
    room = rig.bal.proxy.waitroom
    assert room is not None
    first = send(rig, 2)
    await rig.until(lambda: busy_slots(rig) == 2)
    batch = [
        asyncio.ensure_future(
            rig.post(
                "/api/chat", chat(100 + i), headers=bearer("bulk-key", **{"X-Priority": "batch"})
            )
        )
        for i in range(50)
    ]
    await rig.until(lambda: room.waiting() == 50)
    order: list[str] = []  # classes in the order the wait room dispatched them
    room.listeners.append(
        lambda w, how, now: order.append(w.priority) if how == "dispatched" else None
    )
    critical = asyncio.ensure_future(rig.post("/api/chat", chat(999), headers=bearer("ops-key")))
    await rig.until(lambda: room.waiting() == 51)
    rig.node("a").faults.clear()
    answers = await asyncio.gather(*first, *batch, critical)
    assert all(a.status == 200 for a in answers)
    # when the first slot frees, the critical request goes before all fifty batch ones
    assert order[0] == "critical"
    assert order[1:] == ["batch"] * 50


async def test_a_request_cancelled_while_queued_never_reaches_a_pod(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    rig = await queued_rig(rig_factory, tmp_path)
    room = rig.bal.proxy.waitroom
    assert room is not None
    held = send(rig, 2)
    await rig.until(lambda: busy_slots(rig) == 2)
    (leaving,) = send(rig, 1, first=7)
    await rig.until(lambda: room.waiting() == 1)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    await rig.until(lambda: room.waiting() == 0)
    rig.node("a").faults.clear()
    assert all(a.status == 200 for a in await asyncio.gather(*held))
    assert rig.node("a").stats.requests["/api/chat"] == 2
    assert rig.bal.ledger.total_inflight() == 0


@pytest.mark.parametrize(
    ("path", "body", "message_of"),
    [
        pytest.param("/api/chat", chat(0), lambda d: d["error"], id="ollama shape"),
        pytest.param(
            "/v1/chat/completions",
            {"model": M, "messages": [{"role": "user", "content": "x"}]},
            lambda d: d["error"]["message"],
            id="openai shape",
        ),
    ],
)
async def test_a_full_queue_answers_429_with_retry_after(
    rig_factory: RigFactory, tmp_path: Path, path: str, body: dict[str, Any], message_of: Any
) -> None:
    rig = await queued_rig(rig_factory, tmp_path, queue_max_per_model=1)
    room = rig.bal.proxy.waitroom
    assert room is not None
    held = send(rig, 3)
    await rig.until(lambda: room.waiting() == 1 and busy_slots(rig) == 2)
    resp = await rig.post(path, body, headers=bearer("bulk-key"))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert "waiting" in message_of(await resp.json())
    rig.node("a").faults.clear()
    assert all(a.status == 200 for a in await asyncio.gather(*held))
