"""Resume end to end: a real emulated Ollama, cut mid-answer, continued, stitched, and read
by the official clients (ollama, openai, anthropic) as users read answers.

:class:`ResumingRelay` is a loopback server doing what the balancer's shell does on the
resume path, reduced to it: relay the upstream frames one by one, take the slot back
after ``cuts[i]`` frames of attempt ``i`` (closing upstream at a frame boundary), build the
continuation from what the client received, stitch it, or assemble the answer for a
client that asked for one JSON body.

The emulator does not yet continue a trailing assistant message faithfully: it answers a
continuation with a fresh deterministic answer to the longer prompt.  So the stitched
*text* is checked for its shape (the partial answer, then the continuation's), not against
the uninterrupted answer; the counts are checked exactly where the limit fixes them.
``TIGHTEN`` marks what to assert once the emulator continues faithfully.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import orjson
import pytest
from aiohttp import web
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from ollama_balancer.core.resume import (
    Partial,
    assemble,
    continuation,
    dialect_of,
    partial_of,
    stitcher,
    streamed,
)
from ollama_balancer.core.resume.frames import terminator
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig, default_catalogue

TIME_SCALE = 0.01
LIMIT = 12  # tokens asked for; llama3.2 would say 24, so every answer ends at the limit
USER = [{"role": "user", "content": "Why is the sky blue?"}]
OPENAI_USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": USER[0]["content"]}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": USER[0]["content"]}]


@dataclass
class Attempt:
    body: dict[str, Any]
    upstream: bytes = b""
    """What upstream sent before the cut (all of it for the last attempt)."""


@dataclass
class ResumingRelay:
    upstream: str
    session: aiohttp.ClientSession
    cuts: Sequence[int]
    attempts: list[Attempt] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path, doc = request.path, await request.json()
        dialect = dialect_of(path)
        assert dialect is not None
        to_client = bool(doc.get("stream", dialect.native))
        loop = asyncio.get_running_loop()

        def clock() -> float:  # the emulator's durations are emulated time
            return loop.time() / TIME_SCALE

        started, end = clock(), terminator(dialect)
        out: web.StreamResponse | None = None
        relayed: list[bytes] = []  # what the client received (or will, assembled)
        body, partial = streamed(path, doc), None
        for i in range(len(self.cuts) + 1):
            limit = self.cuts[i] if i < len(self.cuts) else None
            stitch = None
            if partial is not None:
                stitch = stitcher(partial, doc, clock=clock, started=started)
            attempt = Attempt(body)
            self.attempts.append(attempt)
            async with self.session.post(self.upstream + path, json=body) as resp:
                assert resp.status == 200, await resp.text()
                if out is None and to_client:
                    out = web.StreamResponse(headers={"Content-Type": resp.content_type})
                    await out.prepare(request)
                frames = 0
                while limit is None or frames < limit:
                    frame = await resp.content.readuntil(end)
                    if not frame:
                        break
                    frames += 1
                    attempt.upstream += frame
                    data = stitch.feed(frame) if stitch is not None else frame
                    if data:
                        relayed.append(data)
                        if out is not None:
                            await out.write(data)
            # Leaving the block closed upstream mid-answer: the emulator stops generating.
            if limit is None:
                if stitch is not None:
                    relayed.append(stitch.end())
                    assert stitch.ended
                    if out is not None:
                        await out.write(relayed[-1])
                break
            partial = partial_of(dialect, relayed)
            assert partial.resumable and partial.dangling == 0
            self.partials.append(partial)
            body = continuation(path, doc, partial)
        if out is not None:
            await out.write_eof()
            return out
        answer = assemble(dialect, relayed)
        return web.Response(body=answer.body, headers={"Content-Type": answer.content_type})

    def final_native(self) -> dict[str, Any]:
        """The last attempt's own final NDJSON line, as upstream reported it."""
        return dict(orjson.loads(self.attempts[-1].upstream.rstrip(b"\n").rsplit(b"\n", 1)[-1]))

    def relayed_tokens(self) -> int:
        return self.partials[-1].tokens if self.partials else 0


Relay = Callable[[Sequence[int]], Awaitable[tuple[str, ResumingRelay]]]


@pytest.fixture
async def emulated() -> AsyncIterator[str]:
    node = NodeConfig(
        name="gpu-a", host="127.0.0.1", port=0, installed=["llama3.2"], loaded=["llama3.2"]
    )
    config = FleetConfig(nodes=[node], catalogue=default_catalogue(), time_scale=TIME_SCALE)
    async with EmulatedFleet(config) as fleet:
        yield fleet.nodes[0].url


@pytest.fixture
async def relay(emulated: str) -> AsyncIterator[Relay]:
    runners: list[web.AppRunner] = []
    async with aiohttp.ClientSession() as session:

        async def make(cuts: Sequence[int]) -> tuple[str, ResumingRelay]:
            relay = ResumingRelay(emulated, session, cuts)
            app = web.Application()
            app.router.add_post("/{path:.*}", relay.handle)
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            return f"http://127.0.0.1:{port}", relay

        yield make
        for runner in runners:
            await runner.cleanup()


CUTS = [pytest.param([5], id="preempted once"), pytest.param([3, 4], id="preempted twice")]


@pytest.mark.parametrize("cuts", CUTS)
async def test_ollama_chat_stream(relay: Relay, cuts: list[int]) -> None:
    url, resumer = await relay(cuts)
    client = ollama.AsyncClient(host=url)
    try:
        stream = await client.chat(
            model="llama3.2", messages=USER, stream=True, options={"num_predict": LIMIT}
        )
        parts = [part async for part in stream]
    finally:
        await client._client.aclose()
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    pieces = [p.message.content or "" for p in parts[:-1]]
    assert len(pieces) == LIMIT and all(pieces)
    final, theirs = parts[-1], resumer.final_native()
    assert final.done_reason == "length"
    assert final.eval_count == LIMIT == resumer.relayed_tokens() + theirs["eval_count"]
    assert final.prompt_eval_count == theirs["prompt_eval_count"] - resumer.relayed_tokens()
    assert final.eval_duration and final.eval_duration > theirs["eval_duration"]
    assert final.total_duration and final.total_duration >= theirs["total_duration"]
    relayed = "".join(pieces[: resumer.relayed_tokens()])
    assert resumer.attempts[-1].body["messages"][-1] == {"role": "assistant", "content": relayed}
    assert resumer.attempts[-1].body["options"]["num_predict"] == LIMIT - resumer.relayed_tokens()
    # TIGHTEN: "".join(pieces) == the uninterrupted answer's content, and prompt_eval_count
    # == the uninterrupted answer's (the emulator counts the continuation's prompt anew).


async def test_ollama_chat_assembled(relay: Relay) -> None:
    url, resumer = await relay([3, 4])
    client, direct = ollama.AsyncClient(host=url), ollama.AsyncClient(host=resumer.upstream)
    try:
        reply = await client.chat(model="llama3.2", messages=USER, options={"num_predict": LIMIT})
        alone = await direct.chat(model="llama3.2", messages=USER, options={"num_predict": LIMIT})
    finally:
        await client._client.aclose()
        await direct._client.aclose()
    assert all(a.body["stream"] is True for a in resumer.attempts)  # assembled from streams
    assert reply.done and reply.done_reason == alone.done_reason == "length"
    assert reply.eval_count == alone.eval_count == LIMIT
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.message.content.startswith(resumer.partials[-1].text)
    assert reply.model == alone.model
    # TIGHTEN: reply.message.content == alone.message.content and
    # reply.prompt_eval_count == alone.prompt_eval_count.


@pytest.mark.parametrize("cuts", CUTS)
async def test_ollama_raw_generate_stream(relay: Relay, cuts: list[int]) -> None:
    url, resumer = await relay(cuts)
    client = ollama.AsyncClient(host=url)
    try:
        stream = await client.generate(
            model="llama3.2", prompt="The sky is", raw=True, stream=True,
            options={"num_predict": LIMIT},
        )  # fmt: skip
        parts = [part async for part in stream]
    finally:
        await client._client.aclose()
    assert len(parts) == LIMIT + 1 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].eval_count == LIMIT
    relayed = resumer.partials[-1].text
    assert "".join(p.response or "" for p in parts).startswith(relayed)
    assert resumer.attempts[-1].body["prompt"] == "The sky is" + relayed
    # TIGHTEN: the joined response == the uninterrupted raw answer.


@pytest.mark.parametrize("cuts", CUTS)
@pytest.mark.parametrize("usage", [True, False], ids=["with usage", "without usage"])
async def test_openai_stream(relay: Relay, cuts: list[int], usage: bool) -> None:
    url, resumer = await relay(cuts)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="llama3.2",
            messages=OPENAI_USER,
            max_tokens=LIMIT,
            stream=True,
            stream_options={"include_usage": usage},
        )
        chunks = [chunk async for chunk in stream]
    assert len({(c.id, c.created) for c in chunks}) == 1  # one stream, one identity
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.role for d in deltas].count("assistant") == 1 and deltas[0].role == "assistant"
    assert sum(1 for d in deltas if d.content) == LIMIT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usages = [c.usage for c in chunks if c.usage is not None]
    if not usage:
        assert usages == []
        return
    assert len(usages) == 1 and usages[0].completion_tokens == LIMIT
    upstream = [
        orjson.loads(line[6:])
        for line in resumer.attempts[-1].upstream.split(b"\n\n")
        if line.startswith(b"data: {")
    ]
    theirs = next(doc["usage"] for doc in upstream if not doc["choices"])
    assert usages[0].prompt_tokens == theirs["prompt_tokens"] - resumer.relayed_tokens()
    assert usages[0].total_tokens == usages[0].prompt_tokens + LIMIT
    # TIGHTEN: the joined content and prompt_tokens == the uninterrupted answer's.


async def test_openai_assembled(relay: Relay) -> None:
    url, resumer = await relay([3, 4])
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="llama3.2",
            messages=OPENAI_USER,
            max_tokens=LIMIT,
        )
    async with openai.AsyncOpenAI(
        base_url=resumer.upstream + "/v1", api_key="x", max_retries=0
    ) as client:
        alone = await client.chat.completions.create(
            model="llama3.2",
            messages=OPENAI_USER,
            max_tokens=LIMIT,
        )
    assert resumer.attempts[0].body["stream_options"] == {"include_usage": True}
    assert (reply.object, reply.model, reply.system_fingerprint) == (
        alone.object,
        alone.model,
        alone.system_fingerprint,
    )
    assert reply.choices[0].finish_reason == alone.choices[0].finish_reason == "length"
    assert reply.choices[0].message.role == "assistant"
    assert (reply.choices[0].message.content or "").startswith(resumer.partials[-1].text)
    assert reply.usage is not None and alone.usage is not None
    assert reply.usage.completion_tokens == alone.usage.completion_tokens == LIMIT
    # TIGHTEN: content and usage.prompt_tokens == alone's.


@pytest.mark.parametrize("cuts", CUTS)
async def test_anthropic_stream(relay: Relay, cuts: list[int]) -> None:
    url, resumer = await relay(cuts)
    async with (
        anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client,
        client.messages.stream(
            model="llama3.2",
            messages=CLAUDE_USER,
            max_tokens=LIMIT,
        ) as stream,
    ):
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds.count("message_start") == 1 and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == LIMIT
    assert len(final.content) == 1 and final.content[0].type == "text"
    assert final.content[0].text.startswith(resumer.partials[-1].text)
    message = resumer.partials[0].message
    assert message is not None and final.id == message.id
    # TIGHTEN: the text and usage.input_tokens == the uninterrupted answer's.


async def test_anthropic_assembled(relay: Relay) -> None:
    url, resumer = await relay([3, 4])
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        reply = await client.messages.create(
            model="llama3.2",
            messages=CLAUDE_USER,
            max_tokens=LIMIT,
        )
    async with anthropic.AsyncAnthropic(
        base_url=resumer.upstream, api_key="x", max_retries=0
    ) as client:
        alone = await client.messages.create(
            model="llama3.2",
            messages=CLAUDE_USER,
            max_tokens=LIMIT,
        )
    assert (reply.type, reply.role, reply.model, reply.stop_reason, reply.stop_sequence) == (
        alone.type,
        alone.role,
        alone.model,
        alone.stop_reason,
        alone.stop_sequence,
    )
    assert reply.usage.output_tokens == alone.usage.output_tokens == LIMIT
    assert [b.type for b in reply.content] == [b.type for b in alone.content] == ["text"]
    # TIGHTEN: the text and usage.input_tokens == alone's.
