"""Ollama's DNS-rebinding Host check and CORS origin check (docs/ollama.md §7.4, §7.5).

Ollama applies the Host check only when it listens on a loopback address,
which every emulated node does: a request whose ``Host`` is not loopback,
private, ``localhost``, ``*.localhost``/``*.local``/``*.internal`` or this
machine's hostname gets **403 with an empty body**.  CORS runs first: an
``Origin`` that is neither same-origin nor on the default allow-list also
gets an empty 403.  This is why a proxy must rewrite ``Host`` and drop
``Origin`` — and the balancer's tests check it against these rules.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket

__all__ = ["host_allowed", "origin_allowed"]

_DEFAULT_ORIGINS = [
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str | None) -> bool:
    if not host:
        return True
    name = _hostname(host).lower()
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return ip.is_loopback or ip.is_private or ip.is_unspecified
    if name == "localhost" or name.endswith((".localhost", ".local", ".internal")):
        return True
    return name == socket.gethostname().lower()


def origin_allowed(origin: str | None, host: str | None) -> bool:
    if not origin:
        return True
    if host and origin in (f"http://{host}", f"https://{host}"):
        return True
    return any(fnmatch.fnmatchcase(origin, pattern) for pattern in _DEFAULT_ORIGINS)
