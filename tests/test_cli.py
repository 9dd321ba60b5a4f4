"""The ``ollama-fleet`` command as a newcomer runs it: real processes, real output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from ollama_balancer.settings import BalancerSettings

CLI = [sys.executable, "-m", "ollama_fleet"]


def run(*args: str) -> str:
    return subprocess.run([*CLI, *args], check=True, capture_output=True, text=True).stdout


def test_help_lists_subcommands() -> None:
    out = run("--help")
    for sub in ("emulate", "balancer", "demo"):
        assert sub in out


def test_balancer_help_documents_every_setting() -> None:
    out = run("balancer", "--help")
    for name in BalancerSettings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in out, name
        assert "OLLAMA_FLEET_" + name.upper() in out, name


def test_balancer_help_shows_each_real_default_once() -> None:
    """#11: argparse appended "(default: None)" to every flag; each shows its own once."""
    out = " ".join(run("balancer", "--help").split())  # undo argparse's line wrapping
    assert "(default:" not in out
    defaults = BalancerSettings()
    for name in BalancerSettings.__dataclass_fields__:
        value = getattr(defaults, name)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        entry = f"[env OLLAMA_FLEET_{name.upper()}; default: {shown}]"
        assert out.count(entry) == 1, entry


def test_balancer_refuses_bad_config() -> None:
    proc = subprocess.run(
        [*CLI, "balancer", "--backends", "a=http://127.0.0.1:1", "--poll-interval", "-1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "poll_interval: must be > 0" in proc.stderr


@pytest.mark.timeout(60)
def test_demo_serves_a_chat() -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", "0", "--duration", "30", "--time-scale", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"balancer:\s+(http://\S+)", line)
            if match:
                url = match.group(1)
        assert url, "demo did not print its URL"
        tags = json.load(urllib.request.urlopen(url + "/api/tags", timeout=10))
        # The demo's nodes hold chat models and an embedding model: chat with a chat model.
        model = next(m["name"] for m in tags["models"] if "completion" in m["capabilities"])
        req = urllib.request.Request(
            url + "/api/chat",
            data=json.dumps(
                {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
            ).encode(),
        )
        with urllib.request.urlopen(req, timeout=20) as resp:
            doc = json.load(resp)
            assert resp.headers["X-Ollama-Backend"].startswith("ollama-")
        assert doc["done"] is True and doc["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == 0
