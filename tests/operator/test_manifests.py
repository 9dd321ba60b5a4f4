"""Model sizes from the registry before any download: URLs, manifests, the cache, against the
emulated registry on loopback (the same manifests its nodes then download)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from modelpool_operator.manifests import Lookup, ManifestCache
from modelpool_operator.sizing import manifest_size, manifest_url, parse_mirrors
from ollama_emulator import EmulatedFleet, FleetConfig, ModelSpec, NodeConfig, default_catalogue
from ollama_wire.names import canonical


@pytest.mark.parametrize(
    ("name", "mirrors", "url"),
    [
        pytest.param("llama3.2", {}, "https://registry.ollama.ai/v2/library/llama3.2/manifests/latest",
                     id="defaults"),
        pytest.param("jmorgan/llama3:8b", {}, "https://registry.ollama.ai/v2/jmorgan/llama3/manifests/8b",
                     id="namespace"),
        pytest.param("hf.co/bartowski/X:Q4_K_M", {}, "https://hf.co/v2/bartowski/X/manifests/Q4_K_M",
                     id="other host"),
        pytest.param("llama3.2:1b", {"registry.ollama.ai": "http://127.0.0.1:5000/"},
                     "http://127.0.0.1:5000/v2/library/llama3.2/manifests/1b", id="mirror"),
        pytest.param("myreg:5000/ns/m:t", {"myreg:5000": "http://mirror"},
                     "http://mirror/v2/ns/m/manifests/t", id="host with a port, mirrored"),
    ],
)  # fmt: skip
def test_manifest_url(name: str, mirrors: dict[str, str], url: str) -> None:
    assert manifest_url(name, mirrors) == url


@pytest.mark.parametrize(
    ("doc", "size"),
    [
        pytest.param({"layers": [{"size": 10}, {"size": 5}], "config": {"size": 1}}, 16, id="sum"),
        pytest.param({"layers": [{"size": 10}]}, 10, id="no config"),
        pytest.param({"layers": []}, None, id="empty"),
        pytest.param({"layers": [{"size": "10"}]}, None, id="not a number"),
        pytest.param({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, None, id="an error body"),
        pytest.param([], None, id="not an object"),
    ],
)
def test_manifest_size(doc: Any, size: int | None) -> None:
    assert manifest_size(doc) == size


def test_parse_mirrors() -> None:
    assert parse_mirrors("Registry.Ollama.AI=http://m:5000/, hf.co=https://h") == (
        ("registry.ollama.ai", "http://m:5000"),
        ("hf.co", "https://h"),
    )
    assert parse_mirrors("") == ()
    with pytest.raises(ValueError, match="expected HOST=URL"):
        parse_mirrors("registry.ollama.ai")
    with pytest.raises(ValueError, match="expected HOST=URL"):
        parse_mirrors("registry.ollama.ai=mirror:5000")


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatedFleet]:
    catalogue = default_catalogue().with_specs(
        [ModelSpec(name="acme/secret:1b", size_bytes=10**9, private=True)]
    )
    config = FleetConfig(nodes=[NodeConfig(name="n0")], catalogue=catalogue, time_scale=0.01)
    async with EmulatedFleet(config) as f:
        yield f


async def test_lookups_against_the_registry(fleet: EmulatedFleet) -> None:
    now = [0.0]
    async with aiohttp.ClientSession() as session:
        cache = ManifestCache(
            session,
            {"registry.ollama.ai": fleet.registry.url},
            ttl=60,
            retry_after=5,
            clock=lambda: now[0],
        )
        found = await cache.lookup_all(
            {canonical(n): n for n in ("llama3.3:70b", "no-such:7b", "acme/secret:1b")}
        )
        size = fleet.config.catalogue["llama3.3:70b"].size_bytes
        assert found[canonical("llama3.3:70b")] == Lookup(size=size)
        missing = found[canonical("no-such:7b")]
        assert missing.verdict == "ModelNotFound" and "manifest unknown" in missing.detail
        # 401: the pods may hold a key the operator does not: size unknown, no verdict
        secret = found[canonical("acme/secret:1b")]
        assert (secret.size, secret.verdict) == (None, None) and "401" in secret.detail
        asked = sum(fleet.registry.requests.values())
        await cache.lookup("Llama3.3:70B")  # any spelling: cached
        assert sum(fleet.registry.requests.values()) == asked
        now[0] = 61.0  # tags can move: asked again after the TTL
        await cache.lookup("llama3.3:70b")
        assert sum(fleet.registry.requests.values()) == asked + 1
        cache.forget([canonical("no-such:7b")])  # the spec changed: ask again
        await cache.lookup("no-such:7b")
        assert sum(fleet.registry.requests.values()) == asked + 2


async def test_an_unreachable_registry_or_no_lookup_means_size_unknown() -> None:
    async with aiohttp.ClientSession() as session:
        down = ManifestCache(session, {"registry.ollama.ai": "http://127.0.0.1:9"}, timeout=2)
        got = await down.lookup("llama3.2")
        assert (got.size, got.verdict) == (None, None) and "ClientConnectorError" in got.detail
        off = ManifestCache(session, {}, enabled=False)
        assert await off.lookup("llama3.2") == Lookup()
