"""The official clients, used as a user would, against one emulated node."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import ollama
import openai
import pytest

from ollama_emulator import EmulatedNode


@pytest.fixture
async def client(node: EmulatedNode) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=node.url)
    yield client
    await client._client.aclose()


@pytest.fixture
async def oai(node: EmulatedNode) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0) as oai:
        yield oai


async def test_chat_non_stream(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "llama3.2"
    assert reply.done and reply.done_reason == "stop"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 24 and reply.prompt_eval_count
    assert reply.total_duration and reply.total_duration >= (reply.eval_duration or 0)


async def test_chat_stream_joins_to_the_same_text(client: ollama.AsyncClient) -> None:
    messages = [{"role": "user", "content": "why is the sky blue?"}]
    whole = await client.chat(model="llama3.2", messages=messages)
    parts = [p async for p in await client.chat(model="llama3.2", messages=messages, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done_reason == "stop"


async def test_generate_seed_is_deterministic_and_num_predict_limits(
    client: ollama.AsyncClient,
) -> None:
    a = await client.generate(model="llama3.2", prompt="x", options={"seed": 7})
    b = await client.generate(model="llama3.2", prompt="different", options={"seed": 7})
    c = await client.generate(model="llama3.2", prompt="x", options={"num_predict": 3})
    assert a.response == b.response
    assert c.done_reason == "length" and c.eval_count == 3
    assert a.context and len(a.context) == (a.prompt_eval_count or 0) + (a.eval_count or 0)


async def test_generate_stream(client: ollama.AsyncClient) -> None:
    parts = [p async for p in await client.generate(model="llama3.2", prompt="x", stream=True)]
    assert len(parts) == 25 and parts[-1].done and parts[-1].eval_count == 24


async def test_embed_is_normalised_and_deterministic(client: ollama.AsyncClient) -> None:
    one = await client.embed(model="nomic-embed-text", input=["a", "b"])
    two = await client.embed(model="nomic-embed-text", input="a")
    assert len(one.embeddings) == 2 and len(one.embeddings[0]) == 768
    assert one.embeddings[0] == two.embeddings[0] != one.embeddings[1]
    assert math.isclose(sum(x * x for x in one.embeddings[0]), 1.0, rel_tol=1e-4)
    legacy = await client.embeddings(model="nomic-embed-text", prompt="a")
    assert len(legacy.embedding) == 768


async def test_list_ps_show(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert {m.model for m in listed.models} >= {"llama3.2:latest", "nomic-embed-text:latest"}
    running = await client.ps()
    assert [m.model for m in running.models] == ["llama3.2:latest"]
    pinned = running.models[0]
    assert pinned.expires_at and pinned.expires_at > datetime(2300, 1, 1, tzinfo=UTC)
    assert pinned.context_length == 32768 and pinned.size_vram == pinned.size
    shown = await client.show("LLAMA3.2")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo and shown.modelinfo["llama.context_length"] == 131072


async def test_pull_copy_delete(client: ollama.AsyncClient) -> None:
    statuses = [p.status async for p in await client.pull("all-minilm", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert (await client.pull("all-minilm")).status == "success"  # already there
    assert (await client.copy("all-minilm", "mine/minilm:v1")).status == "success"
    names = {m.model for m in (await client.list()).models}
    assert {"all-minilm:latest", "mine/minilm:v1"} <= names
    assert (await client.delete("mine/minilm:v1")).status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("mine/minilm:v1")
    assert err.value.status_code == 404


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        pytest.param(
            lambda c: c.chat(model="nope", messages=[{"role": "user", "content": "x"}]),
            404, "model 'nope' not found", id="chat unknown model",
        ),
        pytest.param(
            lambda c: c.generate(model="nomic-embed-text", prompt="x"),
            400, '"nomic-embed-text" does not support generate', id="generate on embedding model",
        ),
        pytest.param(
            lambda c: c.embed(model="nope", input="x"),
            404, 'model "nope" not found, try pulling it first', id="embed unknown model",
        ),
        pytest.param(
            lambda c: c.show("nope"), 404, "model 'nope:latest' not found", id="show unknown",
        ),
        pytest.param(
            lambda c: c.generate(model="llama3.2", prompt="x", keep_alive="-1"),
            400, 'time: missing unit in duration "-1"', id="keep_alive without unit",
        ),
    ],
)  # fmt: skip
async def test_errors(client: ollama.AsyncClient, call: object, status: int, message: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await call(client)  # type: ignore[operator]
    assert err.value.status_code == status
    assert err.value.error == message


async def test_pull_unknown_model_fails_in_stream(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        async for _ in await client.pull("no-such-model", stream=True):
            pass
    assert err.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as err:
        await client.pull("no-such-model")
    assert err.value.status_code == 500


async def test_openai_chat(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.model == "llama3.2" and reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage and reply.usage.completion_tokens == 5
    stream = await oai.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage and chunks[-1].usage.total_tokens == reply.usage.total_tokens


async def test_openai_completions_embeddings_models(oai: openai.AsyncOpenAI) -> None:
    done = await oai.completions.create(model="llama3.2", prompt="once")
    assert done.choices[0].finish_reason == "stop" and done.choices[0].text
    emb = await oai.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 768
    ids = [m.id async for m in oai.models.list()]
    assert "llama3.2:latest" in ids
    assert (await oai.models.retrieve("llama3.2")).id == "llama3.2"


async def test_openai_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as empty:
        await oai.chat.completions.create(model="llama3.2", messages=[])
    assert "[] is too short - 'messages'" in str(empty.value)
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")
