"""``/api/blobs`` and ``/api/create`` as ``ollama create`` uses them (docs/ollama.md §2.4)."""

# ruff: noqa: E501  (the refusal table reads best one case per line)

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from ollama_emulator import EmulatedNode
from tests.harness.emulator import MakeNode

GGUF = b"GGUF" + bytes(range(256)) * 64  # a "model file": the magic and some weights


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def client(node: EmulatedNode) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=node.url)
    yield client
    await client._client.aclose()


async def lines(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (await resp.read()).splitlines()]


async def test_blob_upload(node: EmulatedNode, http: aiohttp.ClientSession) -> None:
    d = digest(GGUF)
    url = f"{node.url}/api/blobs/{d}"
    assert (await http.head(url)).status == 404
    wrong = await http.post(url, data=GGUF + b"x")
    assert wrong.status == 400
    assert (await wrong.json())[
        "error"
    ] == f'digest mismatch, expected "{d}", got "{digest(GGUF + b"x")}"'
    assert (await http.head(url)).status == 404
    assert (await http.post(url, data=GGUF)).status == 201
    assert (await http.head(url)).status == 200
    assert (await http.post(url, data=GGUF)).status == 200  # already there


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("HEAD", "/api/blobs/sha256:abc", 400, id="HEAD short digest"),
        pytest.param("POST", "/api/blobs/md5:" + "0" * 32, 400, id="POST other algorithm"),
        pytest.param("GET", "/api/blobs/sha256:" + "0" * 64, 405, id="GET is not served"),
    ],
)
async def test_blob_refusals(
    node: EmulatedNode, http: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with http.request(method, node.url + path) as r:
        assert r.status == status
        if method == "POST":
            assert await r.json() == {"error": "invalid digest format"}


async def test_create_from_an_uploaded_gguf_with_the_official_client(
    client: ollama.AsyncClient, node: EmulatedNode, tmp_path: Path
) -> None:
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(GGUF)
    d = await client.create_blob(model_file)
    statuses = [
        p.status
        async for p in await client.create(
            model="mine/custom:v1", files={"model.gguf": d}, stream=True
        )
    ]
    assert statuses == ["parsing GGUF", f"using existing layer {d}", "writing manifest", "success"]
    listed = {m.model: m for m in (await client.list()).models}
    assert listed["mine/custom:v1"].size == len(GGUF)
    reply = await client.chat(model="mine/custom:v1", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content


async def test_the_same_upload_makes_the_same_model_everywhere(make_node: MakeNode) -> None:
    digests = []
    for _ in range(2):
        node = await make_node()
        async with aiohttp.ClientSession() as http:
            d = digest(GGUF)
            await http.post(f"{node.url}/api/blobs/{d}", data=GGUF)
            body = {"model": "same", "files": {"w": d}, "stream": False}
            async with http.post(node.url + "/api/create", json=body) as r:
                assert await r.json() == {"status": "success"}
        digests.append(node.library.find("same").spec.digest)  # type: ignore[union-attr]
    assert digests[0] == digests[1]


async def test_create_from_a_model(client: ollama.AsyncClient, node: EmulatedNode) -> None:
    progress = [
        p.status async for p in await client.create(model="helper", from_="llama3.2", stream=True)
    ]
    assert progress[-2:] == ["writing manifest", "success"]
    assert all(s and s.startswith("using existing layer sha256:") for s in progress[:-2])
    listed = {m.model: m for m in (await client.list()).models}
    assert listed["helper:latest"].digest == listed["llama3.2:latest"].digest


async def test_create_from_a_model_not_on_disk_pulls_it(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    async with http.post(node.url + "/api/create", json={"model": "m2", "from": "all-minilm"}) as r:
        got = await lines(r)
    statuses = [x["status"] for x in got]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "success" not in statuses[:-1]
    assert node.library.find("all-minilm") and node.library.find("m2")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param({"model": "x"}, 400, "neither 'from' or 'files' was specified", id="nothing to create from"),
        pytest.param({"model": "bad name!", "from": "llama3.2"}, 400, "invalid model name", id="invalid name"),
        pytest.param({"model": "x", "files": {"w.gguf": "sha256:" + "0" * 64}}, 500,
                     f"open blobs/sha256-{'0' * 64}: no such file or directory", id="blob missing"),
        pytest.param({"model": "x", "from": "nope-not-in-registry"}, 200,
                     "pull model manifest: file does not exist", id="unknown base: in-stream"),
    ],
)  # fmt: skip
async def test_create_refusals(
    node: EmulatedNode, http: aiohttp.ClientSession, body: Any, status: int, message: str
) -> None:
    async with http.post(node.url + "/api/create", json=body) as r:
        assert r.status == status
        got = await lines(r)
    assert got[-1] == {"error": message}


async def test_create_refuses_a_file_that_is_not_a_model(
    node: EmulatedNode, http: aiohttp.ClientSession
) -> None:
    text = b"not a model"
    await http.post(f"{node.url}/api/blobs/{digest(text)}", data=text)
    body = {"model": "x", "files": {"notes": digest(text)}, "stream": False}
    async with http.post(node.url + "/api/create", json=body) as r:
        assert (r.status, await r.json()) == (400, {"error": "unknown type"})
