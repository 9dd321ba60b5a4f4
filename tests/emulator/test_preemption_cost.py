"""What preempting a generation costs on an emulated node (docs/emulator-preemption.md).

A client that goes away frees its slot only when the runner notices: a prompt
being processed finishes its decode step (all of a short prompt), generation
stops within about a token.  A continuation (the prompt plus the partial
answer) pays prompt processing only for what the slot's cache does not hold.
Every number is in emulated seconds (0.01 real seconds each here).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ollama_emulator import EmulatedFleet, EmulatedNode, FleetConfig, ModelSpec, NodeConfig
from tests.harness.emulator import CATALOGUE, GIB
from tests.harness.eventually import eventually

TIME_SCALE = 0.01
#: 100 prompt tokens and 20 generated tokens per emulated second: a 200-token prompt takes
#: 2 s (20 ms real), an answer of 24 tokens 1.2 s.
M = "steady:1b"
SPECS = [
    ModelSpec(name=M, size_bytes=4 * GIB, load_seconds=10, tokens_per_second=20,
              prompt_tokens_per_second=100, response_tokens=24, context_length=65536),
]  # fmt: skip
PER_TOKEN = 1 / 20
QUESTION = "why is the sky blue? " * 40  # 840 characters: ~215 prompt tokens with the template

Nodes = Callable[..., Awaitable[list[EmulatedNode]]]


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    """``await nodes(2, num_parallel=1, ...)``: started nodes with ``M`` resident."""
    fleets: list[EmulatedFleet] = []

    async def make(
        count: int = 1, time_scale: float = TIME_SCALE, **settings: Any
    ) -> list[EmulatedNode]:
        configs = [
            NodeConfig(name=f"n{i}", installed=[M], loaded=[M], **settings) for i in range(count)
        ]
        catalogue = CATALOGUE.with_specs(SPECS)
        fleet = EmulatedFleet(FleetConfig(configs, catalogue, time_scale))
        await fleet.start()
        fleets.append(fleet)
        return fleet.nodes

    yield make
    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat(*partial: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": QUESTION}]
    messages += [{"role": "assistant", "content": p} for p in partial]
    return {"model": M, "messages": messages, **extra}


async def stream(
    http: aiohttp.ClientSession, node: EmulatedNode, body: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """A whole streamed chat: its content tokens and its final line."""
    async with http.post(node.url + "/api/chat", json=body) as r:
        assert r.status == 200, await r.text()
        lines = [json.loads(line) async for line in r.content]
    assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])
    return [line["message"]["content"] for line in lines[:-1]], lines[-1]


async def cut_after(
    http: aiohttp.ClientSession, node: EmulatedNode, body: dict[str, Any], tokens: int
) -> list[str]:
    """Read ``tokens`` streamed tokens, then go away, like a preempting balancer."""
    async with http.post(node.url + "/api/chat", json=body) as r:
        got = [json.loads(await r.content.readline())["message"]["content"] for _ in range(tokens)]
        r.close()
    return got


async def settled(node: EmulatedNode) -> None:
    """Every generation's slot is free again and counted."""
    await eventually(lambda: all(g.outcome != "running" for g in node.stats.generations))


def last(node: EmulatedNode) -> Any:
    return node.stats.generations[-1]


# ---------------------------------------------------------------- cancel costs


async def test_a_cancel_during_prompt_processing_holds_the_slot_until_it_ends(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    (node,) = await nodes(num_parallel=1)
    victim = asyncio.create_task(http.post(node.url + "/api/chat", json=chat()))
    await eventually(lambda: node.stats.generations_started == 1)
    victim.cancel()  # mid-prompt: nothing was streamed yet
    await eventually(lambda: node.stats.generations[0].left_after is not None)
    _, reply = await stream(http, node, chat(options={"num_predict": 1}))
    first, second = node.stats.generations
    prefill = first.prompt_tokens / 100
    assert first.outcome == "cancelled_prefill"
    assert first.left_after is not None and first.left_after < prefill
    assert first.held_seconds >= prefill * 0.99  # the prompt was processed to its end
    # The next request on the only slot started only then, and found that prompt cached.
    assert second.started_at >= first.started_at + first.held_seconds
    assert second.cached_tokens == first.prompt_tokens - 1
    assert node.stats.generations_cancelled_prefill == 1 and reply["done_reason"] == "length"
    with pytest.raises(asyncio.CancelledError):
        await victim


async def test_a_cancel_during_generation_frees_the_slot_within_about_a_token(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    # Tokens of 2.5 ms real: the event loop's own delays stay well under a token.
    (node,) = await nodes(num_parallel=1, time_scale=0.05)
    got = await cut_after(http, node, chat(), 3)
    await settled(node)
    record = last(node)
    assert record.outcome == "cancelled_decode" and len(got) == 3
    after = record.held_seconds - record.left_after
    assert after <= 4 * PER_TOKEN  # the token in flight when it was seen, and one more
    assert record.eval_count < 24 / 2  # most of the answer was never generated
    assert node.stats.generations_cancelled_decode == 1


@pytest.mark.parametrize(
    ("poll", "held"),
    [
        pytest.param(1.0, (5.12, 6.5), id="llama-server: the 512-token step in progress"),
        pytest.param(float("inf"), (30.0, 31.5), id="Go runners: the whole prompt"),
    ],
)
async def test_a_long_prompt_cancelled_early(
    nodes: Nodes, http: aiohttp.ClientSession, poll: float, held: tuple[float, float]
) -> None:
    (node,) = await nodes(cancel_poll_seconds=poll)
    body = {"model": M, "prompt": "lorem ipsum " * 1000, "raw": True}  # 3000 tokens: 30 s
    victim = asyncio.create_task(http.post(node.url + "/api/generate", json=body))
    await eventually(lambda: node.stats.generations_started == 1)
    victim.cancel()
    await settled(node)
    record = last(node)
    assert record.left_after < 1.0 and held[0] <= record.held_seconds < held[1]
    # What was evaluated stays in the slot: the same prompt again finds it there.
    async with http.post(node.url + "/api/generate", json={**body, "stream": False}) as r:
        assert r.status == 200
    kept = last(node).cached_tokens
    assert (500 <= kept <= 512) if poll == 1.0 else kept == 2999
    with pytest.raises(asyncio.CancelledError):
        await victim


# ---------------------------------------------------------------- continuations


async def test_a_continuation_pays_for_what_the_slot_does_not_hold(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    same, other, reference = await nodes(3, num_parallel=2)
    whole, _ = await stream(http, reference, chat())
    partial = "".join(await cut_after(http, same, chat(), 5))
    await settled(same)

    rest, final = await stream(http, same, chat(partial))
    assert whole[:5] + rest == whole and "".join(whole[:5]) == partial
    assert final["eval_count"] == len(whole) - 5 and final["done_reason"] == "stop"
    prompt_tokens = final["prompt_eval_count"]
    assert last(same).cached_tokens == prompt_tokens - 1 and last(same).continuation
    assert final["prompt_eval_duration"] == pytest.approx(0.01e9)  # one token at 100/s

    elsewhere, away = await stream(http, other, chat(partial))
    assert elsewhere == rest and away["prompt_eval_count"] == prompt_tokens
    assert away["prompt_eval_duration"] == pytest.approx(prompt_tokens / 100 * 1e9)
    assert last(other).cached_tokens == 0
    assert same.stats.continuation_cached_tokens == prompt_tokens - 1
    # A continuation's record starts like its original's: both are the same conversation's.
    original, continued = same.stats.generations
    assert continued.prompt_head == original.prompt_head != ""


async def test_num_predict_limits_the_new_tokens_of_a_continuation(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    (node,) = await nodes()
    whole, _ = await stream(http, node, chat())
    rest, final = await stream(http, node, chat("".join(whole[:5]), options={"num_predict": 3}))
    assert rest == whole[5:8]
    assert final["eval_count"] == 3 and final["done_reason"] == "length"


@pytest.mark.parametrize(
    ("ram", "restored"),
    [
        pytest.param(8 * GIB, True, id="host memory keeps the victim's cache"),
        pytest.param(0, False, id="without it the prompt is processed again"),
    ],
)
async def test_a_continuation_after_another_request_used_the_slot(
    nodes: Nodes, http: aiohttp.ClientSession, ram: int, restored: bool
) -> None:
    (node,) = await nodes(num_parallel=1, prompt_cache_ram=ram)
    partial = "".join(await cut_after(http, node, chat(), 5))
    await stream(http, node, {"model": M, "messages": [{"role": "user", "content": "hello"}]})
    _, final = await stream(http, node, chat(partial))
    record = last(node)
    assert record.restored is restored
    if restored:
        assert record.cached_tokens == final["prompt_eval_count"] - 1
    else:
        assert record.cached_tokens < final["prompt_eval_count"] / 20  # the role header only


async def test_the_next_turn_of_a_conversation_pays_for_the_new_turn(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    (node,) = await nodes()
    whole, first = await stream(http, node, chat())
    turn = chat("".join(whole))
    turn["messages"].append({"role": "user", "content": "and at night?"})
    _, second = await stream(http, node, turn)
    new = second["prompt_eval_count"] - last(node).cached_tokens
    assert new <= 15 and first["prompt_eval_count"] > 200  # the new turn and its headers


async def test_generations_are_listed_on_the_control_endpoint(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    (node,) = await nodes()
    await stream(http, node, chat())
    async with http.get(node.url + "/-/emulator/generations") as r:
        (record,) = (await r.json())["generations"]
    assert record["outcome"] == "completed" and record["eval_count"] == 24
    assert record["model"] == M and record["continuation"] is False
    assert record["prompt_head"] == ("<|user|>\n" + QUESTION)[:80]  # whose prompt it was
    async with http.get(node.url + "/-/emulator/state") as r:
        stats = (await r.json())["stats"]
    assert "generations" not in stats and stats["prompt_tokens"] == record["prompt_tokens"]
