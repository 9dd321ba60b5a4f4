"""What each client shows when a pod dies mid-answer: an error, never a complete answer.

The balancer ends a broken stream the way a dying server does: NDJSON first gets Ollama's own
mid-stream failure line, ``{"error": ...}`` (ollama-python raises it), then on every path the
connection is cut — no final empty chunk, no ``[DONE]``, no ``message_stop``.  Checked here
with each official client and with aiohttp's, which is what Open WebUI reads Ollama with
("Response payload is not completed"); docs/clients.md records what follows.

The pod dies through the emulator's ``drop_after`` fault (its connection cut after two
chunks) on the native and OpenAI paths.  On ``/v1/messages`` that fault plays Ollama's runner
failure instead, which ends the stream cleanly without ``message_stop`` (docs/anthropic.md
§5.7), so there the pod is stopped mid-stream, as a killed pod would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import anthropic
import ollama
import openai
import pytest

from ollama_balancer.core.record import RequestRecord
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
HI = [{"role": "user", "content": "hi"}]
STREAMS = {
    "/api/chat": {"model": M, "messages": HI},
    "/api/generate": {"model": M, "prompt": "hi"},
    "/v1/chat/completions": {"model": M, "messages": HI, "stream": True},
    "/v1/messages": {"model": M, "messages": HI, "max_tokens": 64, "stream": True},
}


@pytest.fixture
async def rig(rig_factory: RigFactory) -> Rig:
    """One pod that dies after two chunks of every answer on the paths it can cut."""
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=0.05)
    rig.node("a").faults.drop_after(chunks=2, paths=[p for p in STREAMS if p != "/v1/messages"])
    return rig


@pytest.fixture(autouse=True)
def no_traceback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The balancer's own log shows the break as a request line, never as a traceback
    (aiohttp logs one for a handler that raises after its first byte)."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    yield
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]


@pytest.fixture
async def anthropic_rig(rig_factory: RigFactory) -> AsyncIterator[Rig]:
    """A pod slow enough to be stopped between two events of an Anthropic stream."""
    rig = await rig_factory(nodes(("a", [M], [M])), time_scale=0.05)
    rig.node("a").faults.slow(200.0)
    yield rig
    await rig.node("a").start_listening()


async def kill_after_first_event(rig: Rig, stream: AsyncIterator[object]) -> list[object]:
    """Read the stream's first event, stop its pod, and read on until the client gives up."""
    got = [await anext(stream)]
    await rig.node("a").stop_listening()
    got.extend([event async for event in stream])
    return got


# ---------------------------------------------------------------- the official clients
async def test_ollama_python_raises_the_error_line_on_chat(rig: Rig) -> None:
    parts = []
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            async for part in await client.chat(model=M, messages=HI, stream=True):
                parts.append(part)
    assert "stream broken" in err.value.error
    assert parts and not any(p.done for p in parts)  # what arrived, and never a finish


async def test_ollama_python_raises_the_error_line_on_generate(rig: Rig) -> None:
    parts = []
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            async for part in await client.generate(model=M, prompt="hi", stream=True):
                parts.append(part)
    assert "stream broken" in err.value.error
    assert parts and not any(p.done for p in parts)


async def test_openai_sdk_raises_a_connection_error(rig: Rig) -> None:
    chunks = []
    async with openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                chunks.append(chunk)
    assert chunks
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)


async def test_anthropic_sdk_raises_a_connection_error(anthropic_rig: Rig) -> None:
    client = anthropic.AsyncAnthropic(base_url=anthropic_rig.url, api_key="x", max_retries=0)
    async with (
        client,
        client.messages.stream(model=M, max_tokens=64, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        with pytest.raises(anthropic.APIConnectionError):
            await kill_after_first_event(anthropic_rig, aiter(stream))


# ------------------------------------------------ aiohttp's client (what Open WebUI reads with)
@pytest.mark.parametrize("path", [p for p in STREAMS if p != "/v1/messages"])
async def test_aiohttp_sees_the_payload_cut_short(rig: Rig, path: str) -> None:
    got = b""
    async with rig.session.post(rig.url + path, json=STREAMS[path]) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError, match="Response payload is not completed"):
            async for chunk in resp.content.iter_any():
                got += chunk
    assert got
    if path.startswith("/api/"):
        last = json.loads(got.splitlines()[-1])
        assert list(last) == ["error"] and "a: stream broken" in last["error"]
    else:
        assert b"[DONE]" not in got and b'"finish_reason":"stop"' not in got


async def test_aiohttp_sees_an_anthropic_stream_cut_short(anthropic_rig: Rig) -> None:
    rig = anthropic_rig
    body = STREAMS["/v1/messages"]
    async with rig.session.post(rig.url + "/v1/messages", json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError, match="Response payload is not completed"):
            await kill_after_first_event(rig, resp.content.iter_any())
    assert resp.headers["X-Ollama-Backend"] == "a"


async def test_the_record_says_the_stream_broke(rig: Rig) -> None:
    records: list[RequestRecord] = []
    rig.bal.records.append(records.append)
    async with rig.session.post(rig.url + "/api/chat", json=STREAMS["/api/chat"]) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await rig.until(lambda: bool(records))
    record = records[0]
    assert record.status == 200 and record.broken_stream and not record.complete
    assert record.error.startswith("a: stream broken")


# ------------------------------------------------ the scheduler's relay (queue_policy=reclaim)
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])  # resumable (not raw)
@pytest.mark.parametrize("hide", [False, True], ids=["pod names", "hide_pod_names"])
async def test_a_break_the_resumer_cannot_resume_is_cut_too(
    rig_factory: RigFactory, path: str, hide: bool
) -> None:
    """With the scheduler on, resumable requests go through the resumer's relay, which
    continues an answer only when the scheduler took its slot back; a pod that breaks it
    ends it as the plain relay does: the error line (NDJSON), then the cut."""
    rig = await rig_factory(
        nodes(("a", [M], [M])),
        time_scale=0.05,
        queue=True,
        queue_policy="reclaim",
        hide_pod_names=hide,
    )
    assert rig.bal.proxy.resumer is not None
    rig.node("a").faults.drop_after(chunks=2, paths=[path])
    records: list[RequestRecord] = []
    rig.bal.records.append(records.append)
    got = b""
    async with rig.session.post(rig.url + path, json=STREAMS[path]) as resp:
        assert resp.status == 200
        assert ("X-Ollama-Backend" in resp.headers) is not hide
        with pytest.raises(aiohttp.ClientPayloadError, match="Response payload is not completed"):
            async for chunk in resp.content.iter_any():
                got += chunk
    assert got
    if path.startswith("/api/"):
        last = json.loads(got.splitlines()[-1])
        told = "a pod: stream broken" if hide else "a: stream broken"
        assert list(last) == ["error"] and told in last["error"]
    else:
        assert b"[DONE]" not in got and b'"finish_reason":"stop"' not in got
    await rig.until(lambda: bool(records))
    assert records[0].broken_stream and records[0].error.startswith("a: stream broken")
    assert records[0].preemptions == 0
