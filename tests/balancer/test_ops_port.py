"""The operations port: probes and Prometheus never need keys, and nothing else is there."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import aiohttp

from ollama_balancer.app import create_app, ops_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_emulator import EmulatedFleet, FleetConfig
from tests.harness.fleet import nodes


async def test_ops_port_serves_health_and_metrics_without_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"secret-key").hexdigest()
    keys.write_text(f"keys:\n  - name: team\n    key_sha256: {digest}\n")
    config = FleetConfig(nodes=nodes(("a", ["llama3.2:3b"], ["llama3.2:3b"])), time_scale=0.01)
    async with EmulatedFleet(config) as fleet, aiohttp.ClientSession() as http:
        settings = BalancerSettings.build(
            port=0, backends=(f"a={fleet.nodes[0].url}",), auth_file=str(keys)
        )
        app = create_app(settings, rng=random.Random(0))
        main, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1)
        ops, ops_port = await serve(ops_app(app), "127.0.0.1", 0, shutdown_timeout=1)
        try:
            base, opsurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
            denied = await http.get(base + "/api/tags")
            assert denied.status == 401
            allowed = await http.get(
                base + "/api/tags", headers={"Authorization": "Bearer secret-key"}
            )
            assert allowed.status == 200
            for path in ("/healthz", "/readyz", "/-/fleet", "/-/dashboard"):
                resp = await http.get(opsurl + path)
                assert resp.status == 200, path
            metrics = await (await http.get(opsurl + "/metrics")).text()
            assert "ollama_fleet_backend_up" in metrics
            # the proxy is not on the operations port
            resp = await http.post(opsurl + "/api/chat", json={"model": "llama3.2:3b"})
            assert resp.status == 404 and await resp.text() == "404 page not found"
        finally:
            await ops.cleanup()
            await main.cleanup()
