"""A partial answer continued through the official clients reads as the uninterrupted answer.

The first tokens of an answer, sent back as a trailing ``assistant`` message
(Anthropic's prefill; a raw prompt for ``/api/generate``), are followed by
exactly the rest of that answer, token for token; the reply carries only the
new tokens, and ``num_predict``/``max_tokens`` count only those.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import ollama
import openai
import pytest
from anthropic.types import ContentBlockParam, Message, MessageParam
from openai.types.chat import ChatCompletionMessageParam

from ollama_emulator import EmulatedNode
from tests.harness.emulator import MakeNode

QUESTION_TEXT = "Why is the sky blue? Answer in one paragraph."
QUESTION = [{"role": "user", "content": QUESTION_TEXT}]
CUT = 7


@pytest.fixture
async def client(node: EmulatedNode) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=node.url)
    yield client
    await client._client.aclose()


@pytest.fixture
async def oai(node: EmulatedNode) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0) as oai:
        yield oai


@pytest.fixture
async def thinker(make_node: MakeNode) -> EmulatedNode:
    return await make_node(installed=["qwen3:8b"], loaded=["qwen3:8b"])


@pytest.fixture
async def claude(thinker: EmulatedNode) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=thinker.url, api_key="ollama", max_retries=0
    ) as client:
        yield client


async def test_ollama_chat(client: ollama.AsyncClient, node: EmulatedNode) -> None:
    stream = await client.chat(model="llama3.2", messages=QUESTION, stream=True)
    whole = [p.message.content or "" async for p in stream][:-1]
    partial = [*QUESTION, {"role": "assistant", "content": "".join(whole[:CUT])}]
    parts = [p async for p in await client.chat(model="llama3.2", messages=partial, stream=True)]
    assert [p.message.content for p in parts[:-1]] == whole[CUT:]
    assert parts[-1].eval_count == len(whole) - CUT and parts[-1].done_reason == "stop"
    assert node.stats.continuations == 1
    # On the same node, the slot still held the question and the whole answer.
    assert node.stats.continuation_cached_tokens == (parts[-1].prompt_eval_count or 0) - 1


async def test_ollama_raw_generate(client: ollama.AsyncClient) -> None:
    prompt = "<|user|>\nWhy is the sky blue?<|end|>\n<|assistant|>\n"
    stream = await client.generate(model="llama3.2", prompt=prompt, raw=True, stream=True)
    whole = [p.response or "" async for p in stream][:-1]
    said = prompt + "".join(whole[:CUT])
    rest = await client.generate(model="llama3.2", prompt=said, raw=True)
    assert rest.response == "".join(whole[CUT:]) and rest.eval_count == len(whole) - CUT
    limited = await client.generate(
        model="llama3.2", prompt=said, raw=True, options={"num_predict": 2}
    )
    assert limited.response == "".join(whole[CUT : CUT + 2]) and limited.done_reason == "length"


async def test_openai_chat_completions(oai: openai.AsyncOpenAI) -> None:
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION_TEXT}]
    chunks = await oai.chat.completions.create(model="llama3.2", messages=question, stream=True)
    whole = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
    whole = [token for token in whole if token]
    messages: list[ChatCompletionMessageParam] = [
        *question,
        {"role": "assistant", "content": "".join(whole[:CUT])},
    ]
    rest = await oai.chat.completions.create(
        model="llama3.2",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    completion_tokens = 0
    async for chunk in rest:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.usage:
            completion_tokens = chunk.usage.completion_tokens
    assert deltas == whole[CUT:] and completion_tokens == len(whole) - CUT
    short = await oai.chat.completions.create(model="llama3.2", messages=messages, max_tokens=3)
    assert short.choices[0].message.content == "".join(whole[CUT : CUT + 3])
    assert short.choices[0].finish_reason == "length"


async def text_deltas(
    claude: anthropic.AsyncAnthropic, messages: list[MessageParam]
) -> tuple[list[str], Message]:
    """The text of a streamed answer, delta by delta, and the final message."""
    deltas: list[str] = []
    async with claude.messages.stream(model="qwen3:8b", max_tokens=500, messages=messages) as s:
        async for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        return deltas, await s.get_final_message()


async def test_anthropic_messages_continue_the_answer_without_more_thinking(
    claude: anthropic.AsyncAnthropic,
) -> None:
    question: list[MessageParam] = [{"role": "user", "content": QUESTION_TEXT}]
    whole, reply = await text_deltas(claude, question)
    thinking = next(b.thinking for b in reply.content if b.type == "thinking")
    prefill: list[ContentBlockParam] = [
        {"type": "thinking", "thinking": thinking, "signature": ""},
        {"type": "text", "text": "".join(whole[:CUT])},
    ]
    rest, final = await text_deltas(claude, [*question, {"role": "assistant", "content": prefill}])
    assert rest == whole[CUT:]
    assert [b.type for b in final.content] == ["text"]
    assert final.usage.output_tokens == len(whole) - CUT and final.stop_reason == "end_turn"


async def test_anthropic_reasoning_partial_goes_on_reasoning(
    claude: anthropic.AsyncAnthropic,
) -> None:
    question: list[MessageParam] = [{"role": "user", "content": QUESTION_TEXT}]
    reply = await claude.messages.create(model="qwen3:8b", max_tokens=500, messages=question)
    thinking = next(b.thinking for b in reply.content if b.type == "thinking")
    text = next(b.text for b in reply.content if b.type == "text")
    cut = thinking.index(" ", 10)
    prefill: list[ContentBlockParam] = [
        {"type": "thinking", "thinking": thinking[:cut], "signature": ""}
    ]
    messages: list[MessageParam] = [*question, {"role": "assistant", "content": prefill}]
    rest = await claude.messages.create(model="qwen3:8b", max_tokens=500, messages=messages)
    assert [b.type for b in rest.content] == ["thinking", "text"]
    assert next(b.thinking for b in rest.content if b.type == "thinking") == thinking[cut:]
    assert next(b.text for b in rest.content if b.type == "text") == text
