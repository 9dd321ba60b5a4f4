"""Static discovery: a fixed list of Ollama servers (``URL`` or ``NAME=URL``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from ollama_wire.backend import Backend

from ..backends import Publish

__all__ = ["StaticDiscovery", "parse_static_backends"]

OLLAMA_PORT = 11434


def parse_static_backends(specs: Iterable[str], *, slots: int = 1) -> list[Backend]:
    """``http://10.0.0.5:11434``, ``gpu-a=http://10.0.0.5:11434`` or ``10.0.0.5`` (scheme
    http and Ollama's port 11434 implied).  Entries may also be comma-separated.  The name
    defaults to ``host:port``.  Raises ``ValueError`` on an empty or duplicate entry."""
    backends: list[Backend] = []
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, url = item.partition("=")
            if not sep or "://" in name:
                name, url = "", item
            url = url.strip()
            if "://" not in url:
                url = "http://" + url
            hostport = url.partition("://")[2].split("/", 1)[0]
            if not hostport or hostport.startswith(":") or hostport.endswith(":"):
                raise ValueError(f"static backend without a host or port: {item!r}")
            url = url.rstrip("/")
            if ":" not in hostport.rsplit("]", 1)[-1]:
                url = url.replace(hostport, f"{hostport}:{OLLAMA_PORT}", 1)
                hostport = f"{hostport}:{OLLAMA_PORT}"
            backends.append(Backend(name=name.strip() or hostport, url=url, slots=slots))
    names = [b.name for b in backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate static backend names: {', '.join(duplicates)}")
    return backends


class StaticDiscovery:
    """Publishes one fixed set, then waits to be cancelled."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = tuple(backends)

    async def run(self, publish: Publish) -> None:
        publish(list(self.backends))
        await asyncio.get_running_loop().create_future()  # until cancelled
