"""API keys and their per-key state, kept fresh from the keys file; server limits.

The request pipeline (:mod:`pipeline`) enforces what this module holds: the key
table, each key's in-flight count and token buckets, the connection cap.

* Slow clients: aiohttp's ``keepalive_timeout`` closes a connection that has
  not completed its request headers in time (it arms at connection start, so
  a client dribbling header bytes is cut off too), and the pipeline's body
  deadline bounds the time a client may take to send its body.
* Header lines longer than ``max_header_bytes`` are rejected by aiohttp's
  parser with 400 (plain text: that answer is produced before any middleware).

The pure parts (key table, buckets) are :mod:`ollama_balancer.core.auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .core.auth import ApiKey, AuthConfigError, KeyState, KeyTable, parse_keys
from .settings import SecuritySettings
from .state import BALANCER
from .telemetry import get_logger

__all__ = ["SECURITY", "Security", "attach_server", "install_security", "runner_kwargs"]

EVENT_AUTH_RELOAD = "auth_keys_loaded"
EVENT_AUTH_ERROR = "auth_keys_error"


@dataclass
class Security:
    settings: SecuritySettings
    table: KeyTable | None = None  # None: authentication is off
    states: dict[str, KeyState] = field(default_factory=dict)
    server: Any = None  # aiohttp's web.Server once serving
    clock: Callable[[], float] = time.monotonic
    signature: tuple[int, int, int, int] | None = None

    def state(self, key: ApiKey) -> KeyState:
        st = self.states.get(key.name)
        if st is None:
            st = self.states[key.name] = KeyState.for_key(key)
        return st

    # ---- keys file
    def _stat(self) -> tuple[int, int, int, int]:
        # stat() follows symlinks: a Kubernetes Secret update swaps the ..data
        # symlink, which changes the inode (and usually mtime) seen here.
        st = os.stat(self.settings.auth_file)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> KeyTable:
        """Read and parse the keys file (raises OSError or AuthConfigError)."""
        signature = self._stat()
        table = parse_keys(Path(self.settings.auth_file).read_text(encoding="utf-8"))
        self.table, self.signature = table, signature
        names = {k.name for k in table.keys}
        for gone in set(self.states) - names:
            del self.states[gone]  # requests in flight keep their own reference
        return table

    def reload_if_changed(self) -> bool:
        """Re-read the file when its identity changed; keep the old keys on any error."""
        log = get_logger("ollama_fleet.auth")
        try:
            if self._stat() == self.signature:
                return False
            table = self.load()
        except (OSError, AuthConfigError) as exc:
            log.warning(EVENT_AUTH_ERROR, path=self.settings.auth_file, error=str(exc))
            return False
        log.info(EVENT_AUTH_RELOAD, keys=len(table.keys), names=[k.name for k in table.keys])
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_reload_seconds)
            await asyncio.to_thread(self.reload_if_changed)


SECURITY = web.AppKey("security", Security)


def runner_kwargs(settings: SecuritySettings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` that bound header sizes and idle time."""
    return {
        "keepalive_timeout": settings.keepalive_timeout,
        # Bodies reach the pipeline as sent: it decodes zstd where Ollama does and nothing
        # else (Ollama never decodes gzip or deflate request bodies either).
        "auto_decompress": False,
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
    }


def attach_server(app: web.Application, server: Any) -> None:
    """Tell the connection cap which server's connections to count."""
    app[SECURITY].server = server


def install_security(app: web.Application, states: dict[str, KeyState]) -> None:
    """The key table (and its watcher when ``auth_file`` is set); ``states`` are the keys'
    local limits, shared with the local state that enforces them (:mod:`shared.local`)."""

    settings = app[BALANCER].settings.security
    sec = Security(settings, states=states, clock=app[BALANCER].clock)
    if settings.auth_file:
        try:
            sec.load()
        except OSError as exc:
            raise AuthConfigError(f"auth_file: cannot read {settings.auth_file}: {exc}") from exc
        app.cleanup_ctx.append(_watcher)
    app[SECURITY] = sec


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SECURITY].watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def describe_keys(table: KeyTable) -> str:
    """Names and limits (never hashes), for ``--help``-style diagnostics and tests."""
    return json.dumps(
        [
            {
                "name": k.name,
                "models": list(k.models),
                "max_concurrent": k.max_concurrent,
                "requests_per_minute": k.requests_per_minute,
                "tokens_per_minute": k.tokens_per_minute,
                "admin": k.admin,
            }
            for k in table.keys
        ]
    )
