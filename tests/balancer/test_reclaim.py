"""The scheduler makes room: a light tenant's request takes a slot back from a heavy tenant's
long generation, which is resumed and reaches its client whole (issue #23).

One pod with two slots, one model, ``queue_policy=reclaim`` on a single balancer (its state
local).  The heavy tenant fills both slots with long streams; the light tenant's fair share of
the standard class is one slot, so its request is entitled and takes one back; the heavy
stream that lost it continues from where it was cut — token for token the answer it would
have got alone, which the official clients see as one uninterrupted answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any

import aiohttp
import anthropic
import ollama
import openai

from ollama_balancer.core.auth import hash_key
from ollama_balancer.core.queueing import Waiting
from ollama_balancer.observability import request_fields, request_sample
from ollama_emulator import default_catalogue
from tests.harness.eventually import eventually
from tests.harness.fleet import Rig, RigFactory, node

M = "llama3.2"
#: llama3.2 whose answers run until num_predict / max_tokens (a long generation on demand).
CATALOGUE = default_catalogue().with_specs(
    [dataclasses.replace(default_catalogue()[M], response_tokens=100_000)]
)
LONG = 400  # tokens: about 0.7 s of real time at the emulator's 60 tokens/s × 0.1
SHORT = 8
HEAVY = {"X-Tenant": "heavy"}
LIGHT = {"X-Tenant": "light"}
TIME_SCALE = 0.1


def ask(text: str, n: int) -> dict[str, Any]:
    return {
        "model": M,
        "messages": [{"role": "user", "content": text}],
        "options": {"num_predict": n},
    }


async def reclaiming(rig_factory: RigFactory, **kw: Any) -> Rig:
    return await rig_factory(
        [node("a", [M], [M], num_parallel=2)],
        time_scale=TIME_SCALE,
        catalogue=CATALOGUE,
        queue=True,
        queue_policy=kw.pop("queue_policy", "reclaim"),
        default_slots=2,
        **{"tenant_header": "X-Tenant", **kw},
    )


async def settled(rig: Rig) -> None:
    """Every generation the pods started has let go of its slot (a cut one a token later)."""
    for n in rig.fleet.nodes:
        await eventually(
            functools.partial(_all_ended, n.stats.generations),
            f"{n.name}: every generation ended",
        )


def _all_ended(generations: Any) -> bool:
    return all(g.outcome != "running" for g in generations)


async def uninterrupted(rig: Rig, prompt: str) -> dict[str, Any]:
    """The answer the pod gives the same request alone (its own session, closed here)."""
    body = {"model": M, "messages": [{"role": "user", "content": prompt}], "max_tokens": LONG}
    async with (
        aiohttp.ClientSession() as session,
        session.post(rig.fleet.nodes[0].url + "/v1/chat/completions", json=body) as answer,
    ):
        doc: dict[str, Any] = await answer.json()
        return doc


async def stream_text(client: ollama.AsyncClient, body: dict[str, Any]) -> tuple[str, Any]:
    parts = [p async for p in await client.chat(**body, stream=True)]
    return "".join(p.message.content or "" for p in parts[:-1]), parts[-1]


async def test_a_light_request_takes_a_slot_back_and_the_heavy_one_resumes(
    rig_factory: RigFactory,
) -> None:
    rig = await reclaiming(rig_factory)
    records: list[Any] = []
    rig.bal.records.append(records.append)
    heavy = ollama.AsyncClient(host=rig.url, headers=HEAVY)
    light = ollama.AsyncClient(host=rig.url, headers=LIGHT)
    alone = ollama.AsyncClient(host=rig.fleet.nodes[0].url)
    try:
        one = asyncio.create_task(stream_text(heavy, ask("write a long story", LONG)))
        two = asyncio.create_task(stream_text(heavy, ask("write another long story", LONG)))
        a = rig.fleet.nodes[0]
        await eventually(lambda: a.stats.generations_started >= 2, "both heavy streams running")
        reply = await light.chat(**ask("hi", SHORT))
        assert reply.done and reply.eval_count == SHORT
        (text1, final1), (text2, final2) = await asyncio.gather(one, two)
        bal = rig.apps[0]
        # one heavy stream was taken back and resumed, the other never
        assert a.stats.continuation_prompt_tokens > 0
        for text, final, prompt in ((text1, final1, "write a long story"),
                                    (text2, final2, "write another long story")):  # fmt: skip
            assert final.done and final.eval_count == LONG
            direct = await alone.chat(**ask(prompt, LONG))
            assert text == direct.message.content  # token for token, as if uninterrupted
            assert final.prompt_eval_count == direct.prompt_eval_count
        # the request log says which answer was taken back, and what each one was promised
        lines = [request_fields(r, request_sample(r, rig.bal.view.snapshot)) for r in records]
        chats = [line for line in lines if line["path"] == "/api/chat"]
        assert sorted(line["preemptions"] for line in chats) == [0, 0, 1]
        assert all(line["queue_estimate"] is not None for line in chats)
    finally:
        for c in (heavy, light, alone):
            await c._client.aclose()
        await settled(rig)
    assert bal is not None


async def test_a_continuation_waits_in_its_requests_place(rig_factory: RigFactory) -> None:
    """The rest of a request taken back waits with the time the request reached the balancer:
    its place among its tenant's requests, the same on every replica's board.  (It once
    carried the clock's zero: first of everything, and hours old on the board.)"""
    rig = await reclaiming(rig_factory)
    room = rig.bal.proxy.waitroom
    assert room is not None
    left: list[tuple[Waiting, str]] = []
    room.listeners.append(lambda w, how, _now: left.append((w, how)))
    heavy = ollama.AsyncClient(host=rig.url, headers=HEAVY)
    light = ollama.AsyncClient(host=rig.url, headers=LIGHT)
    try:
        sent = rig.bal.clock()
        one = asyncio.create_task(stream_text(heavy, ask("write a long story", LONG)))
        two = asyncio.create_task(stream_text(heavy, ask("write another long story", LONG)))
        a = rig.fleet.nodes[0]
        await eventually(lambda: a.stats.generations_started >= 2, "both heavy streams running")
        await light.chat(**ask("hi", SHORT))
        await asyncio.gather(one, two)
        cut = max(w.enqueued for w, _ in left)
    finally:
        for c in (heavy, light):
            await c._client.aclose()
        await settled(rig)
    continued = [w for w, how in left if "~" in w.id and how == "dispatched"]
    assert len(continued) == 1
    (rest,) = continued
    (first,) = [w for w, _ in left if w.id == rest.id.split("~")[0]]
    assert sent <= rest.arrived <= first.enqueued < rest.enqueued <= cut


async def test_an_openai_stream_resumes_as_one(rig_factory: RigFactory) -> None:
    rig = await reclaiming(rig_factory)
    oa = openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="x", max_retries=0)
    try:

        async def long_stream(text: str) -> tuple[str, Any, int]:
            stream = await oa.chat.completions.create(
                model=M,
                messages=[{"role": "user", "content": text}],
                max_tokens=LONG,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=HEAVY,
            )
            pieces, usage, ids = [], None, set()
            async with stream:
                async for chunk in stream:
                    ids.add(chunk.id)
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = chunk.usage
            return "".join(pieces), usage, len(ids)

        one = asyncio.create_task(long_stream("a long tale"))
        two = asyncio.create_task(long_stream("another long tale"))
        a = rig.fleet.nodes[0]
        await eventually(lambda: a.stats.generations_started >= 2, "both heavy streams running")
        short = await oa.chat.completions.create(
            model=M,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=SHORT,
            extra_headers=LIGHT,
        )
        assert short.usage is not None and short.usage.completion_tokens == SHORT
        results = await asyncio.gather(one, two)
        assert a.stats.continuation_prompt_tokens > 0
        for (text, usage, ids), prompt in zip(
            results, ("a long tale", "another long tale"), strict=True
        ):
            direct = await uninterrupted(rig, prompt)
            assert text == direct["choices"][0]["message"]["content"]
            assert ids == 1  # one completion id throughout
            assert usage is not None and usage.completion_tokens == LONG
            assert usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    finally:
        await oa.close()
        await settled(rig)


async def test_an_anthropic_stream_resumes_as_one(rig_factory: RigFactory) -> None:
    rig = await reclaiming(rig_factory)
    heavy = anthropic.AsyncAnthropic(base_url=rig.url, api_key="x", default_headers=HEAVY)
    light = ollama.AsyncClient(host=rig.url, headers=LIGHT)
    try:

        async def long_message(text: str) -> tuple[str, Any, int]:
            async with heavy.messages.stream(
                model=M, max_tokens=LONG, messages=[{"role": "user", "content": text}]
            ) as stream:
                pieces = [piece async for piece in stream.text_stream]
                final = await stream.get_final_message()
            return "".join(pieces), final, len(pieces)

        one = asyncio.create_task(long_message("a long saga"))
        two = asyncio.create_task(long_message("another long saga"))
        a = rig.fleet.nodes[0]
        await eventually(lambda: a.stats.generations_started >= 2, "both heavy streams running")
        reply = await light.chat(**ask("hi", SHORT))
        assert reply.eval_count == SHORT
        results = await asyncio.gather(one, two)
        assert a.stats.continuation_prompt_tokens > 0
        for (text, final, pieces), prompt in zip(
            results, ("a long saga", "another long saga"), strict=True
        ):
            body = {
                "model": M,
                "max_tokens": LONG,
                "messages": [{"role": "user", "content": prompt}],
            }
            async with (
                aiohttp.ClientSession() as session,
                session.post(rig.fleet.nodes[0].url + "/v1/messages", json=body) as answer,
            ):
                direct = await answer.json()
            assert text == direct["content"][0]["text"]  # one message, as if uninterrupted
            assert final.content[0].text == text and pieces == LONG
            assert final.usage.output_tokens == LONG
            assert final.usage.input_tokens == direct["usage"]["input_tokens"]
            assert final.stop_reason == "max_tokens"
    finally:
        await heavy.close()
        await light._client.aclose()
        await settled(rig)


async def test_a_non_streamed_answer_is_assembled_whole(rig_factory: RigFactory) -> None:
    """A client that asked for one JSON answer gets one, though its generation was taken back
    and continued: the same answer the pod gives alone, with metrics that add up."""
    rig = await reclaiming(rig_factory)
    heavy = ollama.AsyncClient(host=rig.url, headers=HEAVY)
    light = ollama.AsyncClient(host=rig.url, headers=LIGHT)
    alone = ollama.AsyncClient(host=rig.fleet.nodes[0].url)
    try:
        one = asyncio.create_task(heavy.chat(**ask("one long essay", LONG)))
        two = asyncio.create_task(heavy.chat(**ask("another long essay", LONG)))
        a = rig.fleet.nodes[0]
        await eventually(lambda: a.stats.generations_started >= 2, "both heavy answers running")
        assert (await light.chat(**ask("hi", SHORT))).eval_count == SHORT
        answers = await asyncio.gather(one, two)
        assert a.stats.continuation_prompt_tokens > 0
        for reply, prompt in zip(answers, ("one long essay", "another long essay"), strict=True):
            direct = await alone.chat(**ask(prompt, LONG))
            assert reply.message.content == direct.message.content
            assert reply.eval_count == LONG and reply.done_reason == "length"
            assert reply.prompt_eval_count == direct.prompt_eval_count
        scrape = await rig.scrape()
        preempted = scrape.series("ollama_fleet_preemptions_total")
        assert sum(preempted.values()) == 1
        ((labels, _),) = preempted.items()
        assert dict(labels) == {
            "model": "llama3.2:latest",
            "class": "standard",
            "reason": "tenant-share",
        }
        resumed = scrape.series("ollama_fleet_resumes_total")
        assert {dict(k)["outcome"]: v for k, v in resumed.items()} == {"resumed": 1.0}
        seats = scrape.series("ollama_fleet_class_seats")
        assert sum(seats.values()) == 2  # the pool's two slots, every one owned by a class
    finally:
        for c in (heavy, light, alone):
            await c._client.aclose()
        await settled(rig)


async def test_an_arrival_beyond_its_limit_is_refused_with_the_estimate(
    rig_factory: RigFactory, tmp_path: Any
) -> None:
    """A key whose requests may wait at most a second is told at once, with Retry-After from
    the estimate, when both slots hold long work of its own (nothing is owed to it) — once the
    model's answers have taught its rate; before, the estimate is the defaults' guess and
    refuses no one."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - name: impatient\n    key_sha256: {hash_key('impatient-key')}\n    max_wait: 1\n"
    )
    rig = await reclaiming(rig_factory, auth_file=str(keys), tenant_header="")
    client = ollama.AsyncClient(host=rig.url, headers={"Authorization": "Bearer impatient-key"})
    auth = {"Authorization": "Bearer impatient-key"}
    a = rig.fleet.nodes[0]

    async def third(name: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        started = a.stats.generations_started
        first = asyncio.create_task(stream_text(client, ask(f"{name} one", LONG)))
        second = asyncio.create_task(stream_text(client, ask(f"{name} two", LONG)))
        await eventually(lambda: a.stats.generations_started >= started + 2, "both slots busy")
        async with rig.session.post(
            rig.url + "/api/chat",
            json={**ask(f"{name} three", LONG), "stream": False},
            headers=auth,
        ) as r:
            answer = (r.status, dict(r.headers), await r.json())
        await asyncio.gather(first, second)
        return answer

    try:
        # Nothing timed yet: admitted (it waits for a slot), its estimate still reported.
        status, headers, _ = await third("untaught")
        assert status == 200
        assert float(headers["X-Queue-Estimate"]) >= 0.0
        # The three answers taught the rate: the same arrival is refused at once.
        status, headers, body = await third("taught")
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert "estimated wait" in body["error"]
        async with rig.session.post(
            rig.url + "/api/chat", json={**ask("short", SHORT), "stream": False}, headers=auth
        ) as admitted:
            assert admitted.status == 200
            assert float(admitted.headers["X-Queue-Estimate"]) >= 0.0
    finally:
        await client._client.aclose()
        await settled(rig)


async def test_a_malformed_deadline_is_a_400_in_the_clients_shape(rig_factory: RigFactory) -> None:
    rig = await reclaiming(rig_factory)
    bad = {"X-Request-Deadline": "tomorrow"}
    async with rig.session.post(rig.url + "/api/chat", json=ask("hi", SHORT), headers=bad) as r:
        assert r.status == 400
        assert "X-Request-Deadline" in (await r.json())["error"]
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}]}
    async with rig.session.post(rig.url + "/v1/chat/completions", json=body, headers=bad) as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with rig.session.post(
        rig.url + "/api/chat", json={**ask("hi", SHORT), "stream": False},
        headers={"X-Request-Deadline": "2.5"},
    ) as r:  # fmt: skip
        assert r.status == 200
