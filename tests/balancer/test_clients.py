"""The official ollama and openai Python clients, unchanged, pointed at the balancer."""

from __future__ import annotations

import ollama
import openai
import pytest

from tests.harness.fleet import RigFactory, nodes

M = "llama3.2:3b"
EMB = "nomic-embed-text"


async def test_ollama_client(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M, EMB], [M]), ("b", [M], [])))
    async with ollama.AsyncClient(host=rig.url) as client:
        await _exercise_ollama(client)


async def _exercise_ollama(client: ollama.AsyncClient) -> None:
    chat = await client.chat(model=M, messages=[{"role": "user", "content": "hi"}])
    assert chat.message.role == "assistant" and chat.message.content and chat.done
    parts = [p async for p in await client.generate(model=M, prompt="sky", stream=True)]
    assert parts[-1].done and parts[-1].eval_count == len(parts) - 1
    emb = await client.embed(model=EMB, input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0
    listed = await client.list()
    assert {m.model for m in listed.models} == {"llama3.2:3b", "nomic-embed-text:latest"}
    ps = await client.ps()
    assert [m.model for m in ps.models] == ["llama3.2:3b", "nomic-embed-text:latest"] or {
        m.model for m in ps.models
    } >= {"llama3.2:3b"}
    shown = await client.show(M)
    assert shown.details is not None and shown.details.family
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="missing:1b", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "missing:1b" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        await client.pull(M)
    assert info.value.status_code == 403


async def test_openai_client(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M, EMB], [M])))
    client = openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="unused", max_retries=0)
    try:
        done = await client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content and done.usage and done.usage.total_tokens
        stream = await client.chat.completions.create(
            model=M,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == done.choices[0].message.content
        emb = await client.embeddings.create(model=EMB, input="hello")
        assert len(emb.data[0].embedding) > 0
        models = await client.models.list()
        assert {m.id for m in models.data} == {"llama3.2:3b", "nomic-embed-text:latest"}
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="missing:1b", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=M, messages=[])
    finally:
        await client.close()
