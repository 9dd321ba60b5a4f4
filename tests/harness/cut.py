"""Reading an answer the balancer cut short (a pod died mid-answer): what arrived before the
cut, with a failure if the answer ended cleanly instead."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

__all__ = ["read_cut", "read_cut_lines"]


async def read_cut(resp: aiohttp.ClientResponse) -> bytes:
    """The bytes before the connection was cut; fails when the answer ended cleanly (a
    final empty chunk, or the whole announced length)."""
    got = b""
    try:
        with pytest.raises(aiohttp.ClientPayloadError, match="Response payload is not completed"):
            async for chunk in resp.content.iter_any():
                got += chunk
    finally:
        resp.close()  # the cut connection is done with, whoever opened the response
    return got


async def read_cut_lines(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The NDJSON lines before the cut (the last one Ollama's ``{"error": ...}``)."""
    return [json.loads(line) for line in (await read_cut(resp)).splitlines() if line.strip()]
