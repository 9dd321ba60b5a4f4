"""The emulated registry over HTTP: manifests as Ollama's ``pullModelManifest`` reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from ollama_emulator import EmulatedFleet, FleetConfig, ModelSpec, NodeConfig, default_catalogue
from ollama_emulator.registry import MANIFEST_MEDIA_TYPE, layers

ACCEPT = {"Accept": MANIFEST_MEDIA_TYPE}


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatedFleet]:
    catalogue = default_catalogue().with_specs(
        [ModelSpec(name="acme/secret:1b", size_bytes=10**9, private=True)]
    )
    config = FleetConfig(nodes=[NodeConfig(name="n0")], catalogue=catalogue, time_scale=0.01)
    async with EmulatedFleet(config) as f:
        yield f


async def test_manifest_of_a_known_model(fleet: EmulatedFleet, http: aiohttp.ClientSession) -> None:
    spec = fleet.config.catalogue["llama3.2:1b"]
    url = fleet.registry.url + "/v2/library/llama3.2/manifests/1b"
    async with http.get(url, headers=ACCEPT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == MANIFEST_MEDIA_TYPE
        assert r.headers["Docker-Content-Digest"] == f"sha256:{spec.digest}"
        doc = await r.json(content_type=None)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == MANIFEST_MEDIA_TYPE
    assert doc["layers"][0]["mediaType"] == "application/vnd.ollama.image.model"
    blobs = [(x["digest"], x["size"]) for x in [*doc["layers"], doc["config"]]]
    assert blobs == layers(spec)
    assert sum(size for _, size in blobs) == spec.size_bytes
    assert fleet.registry.requests["/v2/library/llama3.2/manifests/1b"] == 1


async def test_aliases_share_the_manifest(
    fleet: EmulatedFleet, http: aiohttp.ClientSession
) -> None:
    docs = []
    for tag in ("latest", "3b"):
        async with http.get(fleet.registry.url + f"/v2/library/llama3.2/manifests/{tag}") as r:
            docs.append(await r.read())
    assert docs[0] == docs[1] and b'"layers"' in docs[0]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        pytest.param("/v2/library/no-such/manifests/7b", 404, "MANIFEST_UNKNOWN", id="unknown"),
        pytest.param("/v2/library/llama3.2/manifests/99b", 404, "MANIFEST_UNKNOWN", id="no tag"),
        pytest.param("/v2/acme/secret/manifests/1b", 401, "UNAUTHORIZED", id="private"),
    ],
)  # fmt: skip
async def test_registry_errors(
    fleet: EmulatedFleet, http: aiohttp.ClientSession, path: str, status: int, code: str
) -> None:
    async with http.get(fleet.registry.url + path, headers=ACCEPT) as r:
        assert r.status == status
        assert (await r.json())["errors"][0]["code"] == code
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="')
