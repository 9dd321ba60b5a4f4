"""Misbehaving API servers the real one will not imitate on demand: a loopback aiohttp
server speaking just enough of the pods list/watch API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from ollama_balancer.discovery import KubernetesDiscovery, WatchTuning
from ollama_balancer.settings import DiscoveryKind, DiscoverySettings
from tests.harness.discovery import running

POD = {
    "metadata": {"name": "ollama-0", "namespace": "ai", "resourceVersion": "5"},
    "spec": {"containers": [{"name": "ollama"}]},
    "status": {"podIP": "127.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]},
}


class FakeApiServer:
    def __init__(self, watch_mode: str) -> None:
        self.watch_mode = watch_mode
        self.lists = 0
        self.watches = 0

    async def pods(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            self.lists += 1
            return web.json_response(
                {"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [POD]}
            )
        self.watches += 1
        response = web.StreamResponse()
        await response.prepare(request)
        if self.watch_mode == "gone":
            status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
        # "close": end the watch at once, without an event
        await response.write_eof()
        return response


@pytest.fixture
async def fake_kubeconfig(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    fake = FakeApiServer(request.param)
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods", fake.pods)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "current-context": "fake",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    try:
        yield fake, path
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "fake_kubeconfig",
    [
        pytest.param("gone", id="every watch answers 410 Gone"),
        pytest.param("close", id="every watch ends at once"),
    ],
    indirect=True,
)
async def test_a_misbehaving_server_does_not_make_discovery_spin(
    fake_kubeconfig: tuple[FakeApiServer, Path],
) -> None:
    fake, path = fake_kubeconfig
    discovery = KubernetesDiscovery(
        DiscoverySettings(
            kind=DiscoveryKind.KUBERNETES, kube_namespaces=("ai",), kubeconfig=str(path)
        ),
        tuning=WatchTuning(backoff_initial=0.2, backoff_max=0.4),
    )
    async with running(discovery) as rec:
        await rec.wait_names("ollama-0")
        await asyncio.sleep(1.5)
    # Backoff (0.2 s, then 0.4 s, each less up to half its jitter: at least 0.1 s, then 0.2 s)
    # allows at most about nine list+watch rounds in 1.5 s, not hundreds.
    assert fake.lists + fake.watches <= 20, (fake.lists, fake.watches)
    assert discovery.stats["ai"].errors >= 2
    assert len(rec.sets) == 1  # the same pod every time: published once
