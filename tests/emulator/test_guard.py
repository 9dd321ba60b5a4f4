"""Ollama's Host (DNS-rebinding) and CORS checks, as tables."""

import socket

import pytest

from ollama_emulator.guard import host_allowed, origin_allowed


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        pytest.param(None, True, id="no host"),
        pytest.param("127.0.0.1:11434", True, id="loopback"),
        pytest.param("10.1.2.3:11434", True, id="private"),
        pytest.param("0.0.0.0", True, id="unspecified"),
        pytest.param("localhost:11434", True, id="localhost"),
        pytest.param("ollama.internal", True, id=".internal"),
        pytest.param("box.local:80", True, id=".local"),
        pytest.param("[::1]:11434", True, id="ipv6 loopback"),
        pytest.param(socket.gethostname(), True, id="own hostname"),
        pytest.param("api.example.com", False, id="foreign name"),
        pytest.param("8.8.8.8", False, id="public ip"),
    ],
)
def test_host(host: str | None, ok: bool) -> None:
    assert host_allowed(host) is ok


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        pytest.param(None, "x", True, id="no origin"),
        pytest.param("http://localhost:3000", "x", True, id="default allow-list"),
        pytest.param("http://127.0.0.2:11434", "127.0.0.2:11434", True, id="same origin"),
        pytest.param("vscode-webview://abc", "x", True, id="vscode"),
        pytest.param("https://chat.example.com", "127.0.0.2:11434", False, id="foreign origin"),
    ],
)
def test_origin(origin: str | None, host: str, ok: bool) -> None:
    assert origin_allowed(origin, host) is ok
