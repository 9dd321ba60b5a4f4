"""The seconds per generated token that every slot-second estimate rests on are learned from
what clients actually use: OpenAI streams carry no durations, so the relay times them — the
plain relay (early binding) and the resumer's (``queue_policy=reclaim``) alike."""

from __future__ import annotations

import dataclasses
from typing import Any

import openai
import pytest

from ollama_balancer.core.tokens import DEFAULT_DECODE_SECONDS
from ollama_emulator import default_catalogue
from ollama_wire.names import canonical
from tests.harness.fleet import RigFactory, node

M = "llama3.2"
#: Answers run to max_tokens; 60 tokens per emulated second at 1/10 time: 600 a real second.
CATALOGUE = default_catalogue().with_specs(
    [dataclasses.replace(default_catalogue()[M], response_tokens=100_000)]
)
TIME_SCALE = 0.1
PER_TOKEN = TIME_SCALE / default_catalogue()[M].tokens_per_second
KEY = canonical(M)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"queue": False}, id="early binding: the plain relay"),
        pytest.param({"queue": True, "queue_policy": "reclaim"}, id="reclaim: the resumer"),
    ],
)
async def test_an_openai_stream_teaches_the_seconds_per_token(
    rig_factory: RigFactory, settings: dict[str, Any]
) -> None:
    rig = await rig_factory(
        [node("a", [M], [M], num_parallel=2)],
        time_scale=TIME_SCALE,
        catalogue=CATALOGUE,
        default_slots=2,
        **settings,
    )
    rates = rig.bal.proxy.lessons.rates
    assert rates.decode_seconds(KEY) == DEFAULT_DECODE_SECONDS
    client = openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "a story"}], max_tokens=200, stream=True
        )
        async with stream:
            pieces = [c async for c in stream]
        assert len(pieces) > 200
    finally:
        await client.close()
    learned = rates.decode_seconds(KEY)
    # From the first event to the last over the events counted (a few are framing): a little
    # under the pace; on a shared machine up to about twice it.  Far from the default 1/40 s.
    assert 0.8 * PER_TOKEN <= learned < 2 * PER_TOKEN < DEFAULT_DECODE_SECONDS / 5
