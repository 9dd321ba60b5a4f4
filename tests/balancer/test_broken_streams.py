"""What each official client shows when a pod dies mid-answer (the emulator's drop fault).

The balancer ends a broken stream the way Ollama does, per protocol: NDJSON gets a final
``{"error": ..., "done": true, "done_reason": "error"}`` line; SSE (OpenAI, Anthropic) just
ends, without ``[DONE]`` or ``message_stop``.  docs/clients.md records what follows here.
"""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def rig(rig_factory: RigFactory) -> Rig:
    rig = await rig_factory(nodes(("a", [M], [M])))
    rig.node("a").faults.drop_after(chunks=2)
    return rig


async def test_ollama_python_raises_the_error_line(rig: Rig) -> None:
    parts = []
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            async for part in await client.chat(model=M, messages=HI, stream=True):
                parts.append(part)
    assert "stream broken" in err.value.error
    assert parts  # what arrived before the break was delivered


async def test_openai_sdk_ends_the_iteration_without_a_finish_reason(rig: Rig) -> None:
    async with openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [c async for c in stream]
    assert chunks
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)


async def test_anthropic_sdk_stream_ends_without_message_stop(rig: Rig) -> None:
    async with anthropic.AsyncAnthropic(base_url=rig.url, api_key="x", max_retries=0) as client:
        events = []
        async with client.messages.stream(model=M, max_tokens=64, messages=HI) as stream:  # type: ignore[arg-type]
            async for event in stream:
                events.append(event.type)
        assert events and "message_stop" not in events
