"""``/v1/responses`` through the openai client and at the frame level (docs/ollama.md §2.6)."""

from __future__ import annotations

import json

import aiohttp
import openai

from ollama_emulator import EmulatedNode


async def test_responses_with_the_openai_client(node: EmulatedNode) -> None:
    async with openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0) as oai:
        reply = await oai.responses.create(model="llama3.2", input="hi", max_output_tokens=4)
        assert reply.output_text and reply.usage and reply.usage.output_tokens == 4
        stream = await oai.responses.create(model="llama3.2", input="hi", stream=True)
        kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 24


async def test_responses_framing(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3.2", "input": "hi", "stream": True}
    async with http.post(node.url + "/v1/responses", json=body) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        raw = (await r.read()).decode()
    frames = raw.split("\n\n")[:-1]
    assert "[DONE]" not in raw
    for number, frame in enumerate(frames):
        event, data = frame.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert event == "event: " + payload["type"] and payload["sequence_number"] == number
