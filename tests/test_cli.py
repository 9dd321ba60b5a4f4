"""The ``ollama-fleet`` command as a newcomer runs it: real processes, real output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from ollama_balancer.settings import BalancerSettings
from ollama_fleet.demo import BIG_MODEL, EMBEDDING_MODEL, SHARED_MODEL, demo_fleet

CLI = [sys.executable, "-m", "ollama_fleet"]


def run(*args: str) -> str:
    # A wide terminal: argparse would otherwise wrap help text inside hyphenated words.
    env = {**os.environ, "COLUMNS": "10000"}
    return subprocess.run([*CLI, *args], check=True, capture_output=True, text=True, env=env).stdout


def test_help_lists_subcommands() -> None:
    out = run("--help")
    for sub in ("emulate", "balancer", "demo"):
        assert sub in out


def test_balancer_help_documents_every_setting() -> None:
    out = run("balancer", "--help")
    for row in BalancerSettings.declared():
        assert "--" + row.key.replace("_", "-") in out, row.key
        assert "OLLAMA_FLEET_" + row.key.upper() in out, row.key


def test_balancer_help_shows_each_real_default_once() -> None:
    """#11: argparse appended "(default: None)" to every flag; each shows its own once."""
    out = " ".join(run("balancer", "--help").split())  # undo argparse's line wrapping
    assert "(default:" not in out
    defaults = BalancerSettings()
    for row in BalancerSettings.declared():
        value = getattr(getattr(defaults, row.group), row.attr)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        entry = f"[env OLLAMA_FLEET_{row.key.upper()}; default: {shown}]"
        assert out.count(entry) == 1, entry


def test_balancer_refuses_bad_config() -> None:
    proc = subprocess.run(
        [*CLI, "balancer", "--backends", "a=http://127.0.0.1:1", "--poll-interval", "-1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "poll_interval: must be > 0" in proc.stderr


def test_demo_fleet_shows_what_the_balancer_does() -> None:
    """Issue #16 item 7: warm and on-disk chat models, a big cold load, an embedding model,
    and one model warm on two pods."""
    config = demo_fleet()
    catalogue = config.catalogue
    warm: dict[str, int] = {}
    installed: set[str] = set()
    for node in config.nodes:
        for name in node.loaded:
            key = catalogue[name].name
            warm[key] = warm.get(key, 0) + 1
        installed |= {catalogue[name].name for name in (*node.installed, *node.loaded)}
    chat = {n for n in installed if "completion" in catalogue[n].capabilities}
    cold = chat - set(warm)
    assert len(chat & set(warm)) >= 2 and len(cold) >= 2, (warm, cold)
    assert any(catalogue[n].is_embedding for n in installed)
    assert max(warm.values()) >= 2  # the same model warm on two pods
    big = catalogue[BIG_MODEL]
    assert BIG_MODEL in cold and big.load_seconds >= 30 and big.size_bytes > 20e9
    assert SHARED_MODEL in warm and warm[SHARED_MODEL] >= 2
    assert EMBEDDING_MODEL in installed
    # every pod can load each of its models next to what it keeps warm (no eviction)
    for node in config.nodes:
        ctx, slots = node.default_num_ctx(), node.num_parallel
        warm_bytes = sum(catalogue[m].vram_bytes(ctx, slots) for m in node.loaded)
        for name in node.installed:
            if name not in node.loaded:
                need = warm_bytes + catalogue[name].vram_bytes(ctx, slots)
                assert need <= node.vram_bytes, (node.name, name)


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
        printed: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            printed.append(line)
            match = re.search(r"balancer:\s+(http://\S+)", line)
            if match:
                url = match.group(1)
            if "/v1/messages" in line:  # the last line it prints
                break
        assert url, "demo did not print its URL"
        text = "".join(printed)
        for expected in (
            f"Dashboard:              {url}/-/dashboard",
            f"OLLAMA_BASE_URL={url}",
            f"OLLAMA_HOST={url}",
            f'anthropic.Anthropic(base_url="{url}"',
            f"curl -s {url}/api/tags",
        ):
            assert expected in text, expected
        with urllib.request.urlopen(url + "/-/dashboard", timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
        tags = json.load(urllib.request.urlopen(url + "/api/tags", timeout=10))
        chat = [m["name"] for m in tags["models"] if "completion" in m.get("capabilities", [])]
        assert SHARED_MODEL in chat
        req = urllib.request.Request(
            url + "/api/chat",
            data=json.dumps(
                {
                    "model": SHARED_MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": False,
                }
            ).encode(),
        )
        with urllib.request.urlopen(req, timeout=20) as resp:
            doc = json.load(resp)
            assert resp.headers["X-Ollama-Backend"] in ("ollama-0", "ollama-1")
            assert resp.headers["X-Route-Reason"] in ("resident", "affinity")
        assert doc["done"] is True and doc["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == 0
