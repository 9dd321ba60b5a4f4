"""``/api/pull`` from the emulated registry: progress, shared downloads, resume.

As docs/ollama.md §2.4 and §2.7 describe them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from ollama_emulator import EmulatedNode, ModelSpec
from ollama_emulator.registry import layers, manifest
from tests.harness.emulator import MakeNode
from tests.harness.eventually import eventually


async def pull(http: aiohttp.ClientSession, node: EmulatedNode, model: str) -> list[dict[str, Any]]:
    async with http.post(node.url + "/api/pull", json={"model": model}) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(line) for line in (await r.read()).splitlines()]


async def test_progress_sequence(make_node: MakeNode, http: aiohttp.ClientSession) -> None:
    node = await make_node(installed=[])
    lines = await pull(http, node, "llama3.2")
    assert lines[0] == {"status": "pulling manifest"}
    assert [x["status"] for x in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    blobs = layers(node.catalogue["llama3.2"])
    weights = [x for x in lines if x.get("digest") == blobs[0][0]]
    assert weights[0] == {
        "status": f"pulling {blobs[0][0][7:19]}",
        "digest": blobs[0][0],
        "total": blobs[0][1],
    }
    done = [x["completed"] for x in weights[1:]]
    assert len(done) > 3 and done == sorted(done) and done[-1] == blobs[0][1]
    async with http.get(node.url + "/api/tags") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]
    async with http.post(node.url + "/api/generate", json={"model": "llama3.2"}) as r:
        assert (await r.json())["done_reason"] == "load"


async def test_already_present_is_reported_complete(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    lines = await pull(http, node, "llama3.2")
    blob_lines = [x for x in lines if "digest" in x]
    assert len(blob_lines) == 5 and all(x["completed"] == x["total"] for x in blob_lines)
    assert node.stats.downloads_started == 0


async def test_stream_false_answers_only_success(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        node.url + "/api/pull", json={"model": "all-minilm", "stream": False}
    ) as r:
        assert (r.status, await r.read()) == (200, b'{"status":"success"}')


async def test_concurrent_pulls_share_the_download(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(installed=[])
    first, second = await asyncio.gather(
        pull(http, node, "llama3.2"), pull(http, node, "Llama3.2:latest")
    )
    assert first[-1] == second[-1] == {"status": "success"}
    assert node.stats.downloads_started == 5  # one per blob, not per pull
    assert node.stats.pulls_completed == 2


async def test_disconnect_stops_the_download_and_a_later_pull_resumes(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(installed=[])
    weights = layers(node.catalogue["llama3.2"])[0][0]
    async with http.post(node.url + "/api/pull", json={"model": "llama3.2"}) as r:
        while json.loads(await r.content.readline()).get("completed", 0) == 0:
            pass
        r.close()
    await eventually(lambda: not node.puller._downloads)
    partial = node.puller.blobs[weights]
    await asyncio.sleep(0.03)
    assert node.puller.blobs[weights] == partial  # nobody waiting: no progress
    lines = await pull(http, node, "llama3.2")
    resumed = [x for x in lines if x.get("digest") == weights and "completed" in x]
    assert resumed[0]["completed"] >= partial and lines[-1] == {"status": "success"}


async def test_pull_reads_the_same_manifest_the_registry_serves(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    """The registry's layer sizes are what the pull then downloads (config last), and they
    add up to the size /api/tags reports."""
    node = await make_node(installed=[])
    spec = node.catalogue["llama3.2"]
    doc = manifest(spec)
    sizes = [layer["size"] for layer in doc["layers"]] + [doc["config"]["size"]]
    assert sum(sizes) == spec.size_bytes
    lines = await pull(http, node, "llama3.2")
    totals = {x["digest"]: x["total"] for x in lines if "digest" in x}
    order = list(dict.fromkeys(x["digest"] for x in lines if "digest" in x))
    assert order == [layer["digest"] for layer in doc["layers"]] + [doc["config"]["digest"]]
    assert list(totals.values()) == sizes
    async with http.get(node.url + "/api/tags") as r:
        assert (await r.json())["models"][0]["size"] == spec.size_bytes


async def test_unauthorized_model_fails_after_the_manifest(
    make_node: MakeNode, http: aiohttp.ClientSession
) -> None:
    node = await make_node(installed=[])
    node.puller.catalogue = node.catalogue.with_specs(
        [ModelSpec(name="secret/model:1b", size_bytes=10**9, private=True)]
    )
    lines = await pull(http, node, "secret/model:1b")
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: unauthorized: access denied"},
    ]
    assert node.stats.downloads_started == 0
