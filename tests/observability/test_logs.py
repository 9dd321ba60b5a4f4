"""Log events through configure_logging: JSON in production, console lines in a terminal.

The balancer's own events (``request``, ``fleet_change``) and stdlib loggers of
libraries (aiohttp, kubernetes) must come out of the same renderer.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from ollama_balancer.telemetry import EVENT_FLEET_CHANGE, EVENT_REQUEST
from ollama_wire.logs import configure_logging
from tests.harness.fleet import RigFactory, node

SECRET = "SECRET-PROMPT-7f3a"
Configure = Callable[[str], io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging into a buffer; restore structlog and the root logger afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def apply(fmt: str) -> io.StringIO:
        out = io.StringIO()
        configure_logging(fmt, "info", stream=out)
        return out

    try:
        yield apply
    finally:
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)


async def _aiohttp_error(session: aiohttp.ClientSession) -> None:
    """A real aiohttp log record: a handler that raises is logged by aiohttp.server."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("handler exploded")

    app = web.Application()
    app.router.add_get("/", boom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with session.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 500
    finally:
        await runner.cleanup()


async def test_json_logs_one_request_event_fleet_changes_and_library_logs(
    rig_factory: RigFactory, configure: Configure
) -> None:
    out = configure("json")
    rig = await rig_factory([node("a", ["llama3.2"], ["llama3.2"])])
    async with rig.session.post(
        rig.url + "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": SECRET}]},
        headers={"X-Request-ID": "req-42"},
    ) as resp:
        body = await resp.read()
        assert resp.status == 200
    assert (await rig.generate("no-such-model"))[0] == 404
    await _aiohttp_error(rig.session)
    logging.getLogger("kubernetes.client.rest").warning("watch %s expired", "pods")

    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert lines, "nothing was logged"
    for line in lines:
        assert {"event", "level", "timestamp", "logger"} <= line.keys(), line
    assert SECRET not in out.getvalue()

    requests = [ln for ln in lines if ln["event"] == EVENT_REQUEST]
    assert len(requests) == 2  # one per proxied request, nothing else
    ok = next(ln for ln in requests if ln["request_id"] == "req-42")
    want: dict[str, Any] = {
        "logger": "ollama_fleet.balancer",
        "level": "info",
        "client": "",  # no API keys configured
        "method": "POST",
        "path": "/api/chat",
        "model": "llama3.2",
        "backend": "a",
        "reason": "resident",
        "status": 200,
        "attempts": 1,
        "bytes": len(body),
        "client_gone": False,
        "broken_stream": False,
        "error": "",
        "retries": [],
        "cold_load_seconds": None,
    }
    assert {k: ok[k] for k in want} == want
    assert ok["duration"] > 0 and 0 < ok["ttfb"] <= ok["duration"]
    assert ok["eval_count"] > 0 and ok["tokens_per_second"] > 0
    missing = next(ln for ln in requests if ln["request_id"] != "req-42")
    assert (missing["status"], missing["backend"], missing["attempts"]) == (404, "", 0)
    assert "not found" in missing["error"]

    changes = [
        (ln["kind"], ln["backend"], ln["model"])
        for ln in lines
        if ln["event"] == EVENT_FLEET_CHANGE
    ]
    assert changes[:3] == [("joined", "a", ""), ("up", "a", ""), ("loaded", "a", "llama3.2:latest")]

    aio = next(ln for ln in lines if ln["logger"] == "aiohttp.server")
    assert aio["level"] == "error" and "RuntimeError: handler exploded" in aio["exception"]
    kube = next(ln for ln in lines if ln["logger"] == "kubernetes.client.rest")
    assert (kube["event"], kube["level"]) == ("watch pods expired", "warning")


async def test_fleet_change_down_is_a_warning(
    rig_factory: RigFactory, configure: Configure
) -> None:
    out = configure("json")
    rig = await rig_factory([node("a", ["llama3.2"], ["llama3.2"])], poll_interval=30)
    await rig.node("a").stop_listening()
    for _ in range(3):
        await rig.poll()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    down = [ln for ln in lines if ln["event"] == EVENT_FLEET_CHANGE and ln["kind"] == "down"]
    assert len(down) == 1
    assert down[0]["level"] == "warning" and down[0]["backend"] == "a" and down[0]["detail"]


@pytest.mark.parametrize("fmt", ["console", "auto"])
async def test_console_and_auto(rig_factory: RigFactory, configure: Configure, fmt: str) -> None:
    out = configure(fmt)
    rig = await rig_factory([node("a", ["llama3.2"], ["llama3.2"])])
    assert (await rig.generate("llama3.2", prompt=SECRET))[0] == 200
    logging.getLogger("kubernetes.client.rest").warning("watch expired")
    text = out.getvalue()
    assert SECRET not in text
    lines = text.splitlines()
    request = next(ln for ln in lines if EVENT_REQUEST in ln and "status" in ln)
    kube = next(ln for ln in lines if "watch expired" in ln)
    if fmt == "console":
        # Readable key=value lines, libraries included, no JSON.
        assert not request.startswith("{") and not kube.startswith("{")
        assert "status=200" in request and "backend=a" in request and "reason=resident" in request
        assert "[warning" in kube and "[kubernetes.client.rest]" in kube
    else:
        # auto: not a terminal (a pod's stderr) → JSON.
        assert json.loads(request)["status"] == 200
        assert json.loads(kube)["logger"] == "kubernetes.client.rest"
