"""Every refusal is one request record: in /metrics and in the JSON log, with the key's name.

The request pipeline answers 401, 403, 408, 413 and 429 before any handler runs;
each of those answers must still be counted and logged exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ollama_balancer.core.record import RequestRecord
from ollama_balancer.telemetry import EVENT_REQUEST
from ollama_wire.logs import configure_logging
from tests.harness.auth import CHAT, bearer, make
from tests.harness.fleet import RigFactory


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)


def request_events(out: io.StringIO) -> list[dict[str, Any]]:
    lines = (json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{"))
    return [e for e in lines if e.get("event") == EVENT_REQUEST]


def counted(exposition: str, status: int) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("ollama_fleet_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_401_413_429_403_are_each_one_record_in_metrics_and_log(
    rig_factory: RigFactory, tmp_path: Path, json_log: io.StringIO
) -> None:
    rig = await make(rig_factory, tmp_path, max_body_bytes=4096)
    records: list[RequestRecord] = []
    rig.bal.records.append(records.append)

    assert (await rig.post("/api/chat", CHAT)).status == 401
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert (await rig.post("/api/chat", big, headers=bearer("alice-key"))).status == 413
    assert (
        await rig.post("/api/chat", {**CHAT, "model": "qwen2.5:7b"}, headers=bearer("bob-key"))
    ).status == 403
    statuses = [
        (await rig.post("/api/chat", CHAT, headers=bearer("bob-key"))).status for _ in range(3)
    ]
    assert statuses == [200, 200, 429]

    refusals = [(r.status, r.client, r.path) for r in records if r.status >= 400]
    assert refusals == [
        (401, "", "/api/chat"),
        (413, "alice", "/api/chat"),
        (403, "bob", "/api/chat"),
        (429, "bob", "/api/chat"),
    ]
    logged = [(e["status"], e["client"]) for e in request_events(json_log) if e["status"] >= 400]
    assert logged == [(401, ""), (413, "alice"), (403, "bob"), (429, "bob")]
    assert all(e["error"] for e in request_events(json_log) if e["status"] >= 400)

    exposition = await (await rig.session.get(rig.url + "/metrics")).text()
    for status in (401, 403, 413, 429):
        assert counted(exposition, status) == 1, status
    assert counted(exposition, 200) == 2
    # the upstream saw only the two admitted requests
    assert rig.node("a").stats.requests["/api/chat"] == 2


async def test_slow_body_is_408_and_recorded(
    rig_factory: RigFactory, tmp_path: Path, json_log: io.StringIO
) -> None:
    rig = await make(rig_factory, tmp_path, client_body_timeout=0.2)
    host, port = rig.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-key\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    await rig.until(lambda: any(e["status"] == 408 for e in request_events(json_log)))
    event = next(e for e in request_events(json_log) if e["status"] == 408)
    assert event["client"] == "alice" and "not received" in event["error"]
