"""Usage per tenant (issue 25): what an answer used, read in all three APIs, streamed or not,
and what a broken or cancelled stream did generate; the counters by key and tenant header.

Pure reading first (a table of answers' tails), then live: the official-shaped requests
through a real balancer to the emulator, each compared with what its client was told.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from ollama_balancer.core.record import RequestRecord
from ollama_balancer.core.usage import SEARCHED, Counted, Usage, usage_of
from tests.harness.cut import read_cut_lines
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
USER = [{"role": "user", "content": "tell me a story"}]


def _sse(*docs: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (d.encode() if isinstance(d, str) else json.dumps(d).encode()) + b"\n\n"
        for d in docs
    )


OLLAMA_FINAL = (
    b'{"model":"m","message":{"role":"assistant","content":"."},"done":false}\n'
    b'{"model":"m","done":true,"done_reason":"stop","total_duration":9,'
    b'"prompt_eval_count":26,"eval_count":290}\n'
)
OPENAI_BODY = json.dumps(
    {
        "choices": [{"message": {"content": 'say "prompt_tokens": 99'}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }
).encode()
OPENAI_STREAM_USAGE = _sse(
    {"choices": [{"delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}},
    "[DONE]",
)
ANTHROPIC_STREAM = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"input_tokens":11,"output_tokens":5}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
RESPONSES_DONE = (
    b'event: response.completed\ndata: {"type":"response.completed","response":{"status":'
    b'"completed","output":[],"usage":{"input_tokens":4,"output_tokens":8,"total_tokens":12}}}\n\n'
)


@pytest.mark.parametrize(
    ("tail", "chunks", "expected"),
    [
        pytest.param(OLLAMA_FINAL, 2, Usage(26, 290, Counted.REPORTED, "stop"), id="ollama"),
        pytest.param(
            OPENAI_BODY, 0, Usage(12, 30, Counted.REPORTED, "length"), id="openai, escaped key"
        ),
        pytest.param(
            OPENAI_STREAM_USAGE, 3, Usage(7, 3, Counted.REPORTED, "stop"), id="openai usage chunk"
        ),
        pytest.param(
            _sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}, "[DONE]"),
            9,
            Usage(50, 9, Counted.CHUNKS, "stop"),
            id="openai stream without usage: chunks",
        ),
        pytest.param(
            ANTHROPIC_STREAM, 8, Usage(11, 5, Counted.REPORTED, "end_turn"), id="anthropic"
        ),
        pytest.param(
            b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
            b'{"input_tokens":33,"output_tokens":0}}}\n\n'
            b'event: content_block_delta\ndata: {"delta":{"text":"x"}}\n\n',
            2,
            Usage(33, 0, Counted.REPORTED, ""),
            id="anthropic's start counts its output 0: that is a figure",
        ),
        pytest.param(RESPONSES_DONE, 12, Usage(4, 8, Counted.REPORTED, ""), id="responses"),
        pytest.param(
            b'{"model":"m","embeddings":[[0.1]],"prompt_eval_count":6}',
            0,
            Usage(6, 0, Counted.REPORTED, ""),
            id="embed: prompt only",
        ),
        pytest.param(
            b'{"model":"m","message":{"content":"a"},"done":false}\n',
            4,
            Usage(50, 4, Counted.CHUNKS, ""),
            id="broken ndjson: chunks",
        ),
        pytest.param(b"", 0, Usage(0, 0, Counted.NONE, ""), id="nothing"),
        pytest.param(
            b'{"error":"model not found"}', 0, Usage(0, 0, Counted.NONE, ""), id="an error"
        ),
        pytest.param(
            b'{"prompt_eval_count":26,"response":"' + b"x" * SEARCHED + b'",'
            b'"eval_count":290,"done_reason":"stop","done":true}',
            2,
            Usage(0, 290, Counted.REPORTED, "stop"),
            id="only the end is searched",
        ),
    ],
)
def test_usage_of(tail: bytes, chunks: int, expected: Usage) -> None:
    assert usage_of(tail, chunks, lambda: 50) == expected


def _records(rig: Rig) -> list[RequestRecord]:
    out: list[RequestRecord] = []
    rig.bal.records.append(out.append)
    return out


def _told(path: str, raw: bytes) -> tuple[int, int]:
    """The prompt and generated tokens the client was told, however its API says it."""
    prompt = generated = 0
    for line in raw.splitlines():
        line = line.removeprefix(b"data: ").strip()
        if not line.startswith(b"{"):
            continue
        doc = json.loads(line)
        response = doc.get("response")  # the Responses API's object (a string on /api/generate)
        usage = doc.get("usage") or (response.get("usage") if isinstance(response, dict) else {})
        if not isinstance(usage, dict):
            usage = {}
        for key in ("prompt_eval_count", "prompt_tokens", "input_tokens"):
            prompt = int(doc.get(key) or usage.get(key) or prompt)
        for key in ("eval_count", "completion_tokens", "output_tokens"):
            generated = int(doc.get(key) or usage.get(key) or generated)
    return prompt, generated


CASES: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"messages": USER}),
    ("/api/chat", {"messages": USER, "stream": False}),
    ("/api/generate", {"prompt": "a story"}),
    ("/v1/chat/completions", {"messages": USER}),
    (
        "/v1/chat/completions",
        {"messages": USER, "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("/v1/completions", {"prompt": "a story", "max_tokens": 20}),
    ("/v1/messages", {"messages": USER, "max_tokens": 30}),
    ("/v1/messages", {"messages": USER, "max_tokens": 30, "stream": True}),
    ("/v1/responses", {"input": "a story", "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p} {sorted(b)}" for p, b in CASES])
async def test_usage_is_what_the_client_was_told(
    rig_factory: RigFactory, path: str, body: dict[str, Any]
) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), tenant_header="X-Tenant")
    records = _records(rig)
    resp = await rig.post(path, {"model": M, **body}, headers={"X-Tenant": "acme"})
    assert resp.status == 200
    told = _told(path, await resp.read())
    (record,) = records
    assert record.usage.counted is Counted.REPORTED
    assert (record.usage.prompt, record.usage.generated) == told
    assert told[0] > 0 and told[1] > 0
    assert record.tenant_header == "acme"
    assert record.slot_seconds > 0


async def test_an_openai_stream_without_usage_counts_its_chunks(rig_factory: RigFactory) -> None:
    """The client did not ask for usage: the balancer adds nothing to its request (it gets
    exactly Ollama's stream) and counts the chunks it relayed."""
    rig = await rig_factory(nodes(("a", [M], [M])))
    records = _records(rig)
    body = {"model": M, "messages": USER, "stream": True}
    resp = await rig.post("/v1/chat/completions", body)
    raw = await resp.read()
    assert b'"usage"' not in raw
    events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    (record,) = records
    assert record.usage.counted is Counted.CHUNKS
    assert record.usage.generated == len(events)
    assert record.usage.prompt > 0  # the balancer's estimate
    assert rig.node("a").stats.requests["/v1/chat/completions"] == 1


async def test_a_broken_stream_counts_what_it_relayed(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=0.1)
    records = _records(rig)
    rig.node("a").faults.drop_after(3, paths=["/api/chat"])
    resp = await rig.post("/api/chat", {"model": M, "messages": USER})
    lines = await read_cut_lines(resp)
    assert "error" in lines[-1]  # the balancer's ending line
    (record,) = records
    assert record.broken_stream
    assert record.usage.counted is Counted.CHUNKS
    assert record.usage.generated == len(lines) - 1  # the pod's lines, not our error line
    assert record.usage.generated >= 1


async def test_a_cancelled_stream_counts_what_it_relayed(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=1.0)
    records = _records(rig)
    body = {"model": M, "messages": USER, "options": {"num_predict": 400}}
    read = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(rig.url + "/api/chat", json=body) as resp,
    ):
        async for _ in resp.content:
            read += 1
            if read == 5:
                break
    await rig.until(lambda: bool(records))
    (record,) = records
    assert record.status == 499
    assert record.usage.counted is Counted.CHUNKS
    assert record.usage.generated >= read
    assert record.usage.generated < 400


async def test_usage_metrics_by_key_and_bounded_tenant(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])), tenant_header="X-Tenant", usage_tenants=2)
    records = _records(rig)
    for tenant in ("t1", "t2", "t3", "t4", "", "t1"):
        headers = {"X-Tenant": tenant} if tenant else {}
        resp = await rig.post("/api/chat", {"model": M, "messages": USER}, headers=headers)
        assert resp.status == 200
        await resp.read()
    async with rig.session.get(rig.url + "/metrics") as resp:
        text = await resp.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ollama_fleet_usage_")
    }

    def tokens(tenant: str) -> float:
        return sum(
            v
            for k, v in samples.items()
            if "_tokens_total{" in k and f'tenant="{tenant}"' in k and 'client="anonymous"' in k
        )

    by_tenant: dict[str, int] = {}
    chats = [r for r in records if r.path == "/api/chat"]
    for r, tenant in zip(chats, ("t1", "t2", "other", "other", "none", "t1"), strict=True):
        by_tenant[tenant] = by_tenant.get(tenant, 0) + r.usage.prompt + r.usage.generated
    for tenant, total in by_tenant.items():
        assert tokens(tenant) == total, tenant
    assert samples['ollama_fleet_usage_requests_total{client="anonymous",tenant="other"}'] == 2
    assert samples['ollama_fleet_usage_requests_total{client="anonymous",tenant="t1"}'] == 2
    assert samples['ollama_fleet_usage_slot_seconds_total{client="anonymous",tenant="t1"}'] > 0


async def test_concurrent_streams_each_count_their_own(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), num_parallel=4))
    records = _records(rig)

    async def one(n: int) -> tuple[int, int]:
        body = {"model": M, "messages": USER, "options": {"num_predict": 5 + n}}
        resp = await rig.post("/api/chat", body)
        return _told("/api/chat", await resp.read())

    told = await asyncio.gather(*(one(n) for n in range(4)))
    got = sorted((r.usage.prompt, r.usage.generated) for r in records)
    assert got == sorted(told)
