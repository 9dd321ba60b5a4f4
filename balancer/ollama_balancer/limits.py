"""The balancer's front door: API keys, per-key limits, connection cap, slow clients.

Middleware order (outermost first, after the app's own error middleware)::

    connection cap (503) → authenticate (401/403/429) → body deadline (408) → handler

* Unauthenticated clients are turned away before their body is read.
* Slow clients: aiohttp's ``keepalive_timeout`` closes a connection that has
  not completed its request headers in time (it arms at connection start, so
  a client dribbling header bytes is cut off too), and the body deadline
  bounds the time a client may take to send its body.
* Header lines longer than ``max_header_bytes`` are rejected by aiohttp's
  parser with 400 (plain text: that answer is produced before any middleware).

The pure parts (key table, buckets) are :mod:`ollama_balancer.auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .auth import ApiKey, AuthConfigError, KeyState, KeyTable, parse_keys, presented_key
from .proxy import CLIENT_NAME, RequestRecord, error_response
from .requests import BadRequest, parse_request
from .settings import BalancerSettings
from .state import BALANCER
from .telemetry import get_logger

__all__ = ["SECURITY", "Security", "attach_server", "install_security", "runner_kwargs"]

#: Never need a key: probes, Prometheus, the fleet view, and Ollama's "is it up" root.
_EXEMPT = frozenset({"/", "/healthz", "/readyz", "/metrics"})
_ADMIN = frozenset({"/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push"})
_MODEL_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/pull",
        "/api/delete",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    }
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

EVENT_AUTH_RELOAD = "auth_keys_loaded"
EVENT_AUTH_ERROR = "auth_keys_error"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Security:
    settings: BalancerSettings
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


def runner_kwargs(settings: BalancerSettings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` that bound header sizes and idle time."""
    return {
        "keepalive_timeout": settings.keepalive_timeout,
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
    }


def attach_server(app: web.Application, server: Any) -> None:
    """Tell the connection cap which server's connections to count."""
    app[SECURITY].server = server


def install_security(
    app: web.Application, on_record: list[Callable[[RequestRecord], None]]
) -> None:
    """Add the middlewares (and the keys-file watcher when ``auth_file`` is set)."""

    settings = app[BALANCER].settings
    sec = Security(settings, clock=app[BALANCER].clock)
    if settings.auth_file:
        try:
            sec.load()
        except OSError as exc:
            raise AuthConfigError(f"auth_file: cannot read {settings.auth_file}: {exc}") from exc
        app.cleanup_ctx.append(_watcher)
    app[SECURITY] = sec

    def charge_tokens(record: RequestRecord) -> None:
        st = sec.states.get(record.client) if record.client else None
        if st is None or not record.metrics:
            return
        used = _count(record.metrics, "eval_count") + _count(record.metrics, "prompt_eval_count")
        if used:
            st.tokens.charge(sec.clock(), used)

    on_record.append(charge_tokens)
    app.middlewares.extend([_connection_cap, _authenticate, _body_deadline])


def _count(metrics: dict[str, Any], key: str) -> int:
    value = metrics.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SECURITY].watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ------------------------------------------------------------------ middlewares
@web.middleware
async def _connection_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
    sec = request.app[SECURITY]
    cap = sec.settings.max_connections
    if cap and sec.server is not None and len(sec.server.connections) > cap:
        resp = error_response(
            request.path, 503, f"too many open connections (limit {cap})", retry_after=1
        )
        resp.force_close()
        return resp
    return await handler(request)


def _exempt(path: str) -> bool:
    return path in _EXEMPT or path.startswith("/-/")


def _is_admin(path: str) -> bool:
    return path in _ADMIN or path.startswith("/api/blobs/")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    sec = request.app[SECURITY]
    table = sec.table
    path = request.path
    if table is None or _exempt(path):
        return await handler(request)
    sent = presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    key = table.lookup(sent) if sent is not None else None
    if key is None:
        message = "missing API key" if sent is None else "invalid API key"
        return error_response(path, 401, message, headers={"WWW-Authenticate": "Bearer"})
    if _is_admin(path) and not key.admin:
        return error_response(path, 403, f"key '{key.name}' may not call {path}")
    if path in _MODEL_PATHS and request.method in _BODY_METHODS and "*" not in key.models:
        denied = await _model_denied(request, key)
        if denied is not None:
            return denied
    st = sec.state(key)
    refused = st.admit(key, sec.clock())
    if refused is not None:
        reason, retry_after = refused
        return error_response(path, 429, f"key '{key.name}': {reason}", retry_after=retry_after)
    request[CLIENT_NAME] = key.name
    try:
        return await handler(request)
    finally:
        st.inflight -= 1


async def _model_denied(request: web.Request, key: ApiKey) -> web.StreamResponse | None:
    timeout = request.app[SECURITY].settings.client_body_timeout
    raw = await _read_body(request, timeout)
    if isinstance(raw, web.StreamResponse):
        return raw
    try:
        req = parse_request(raw, request.path, None)
    except BadRequest:
        return None  # the handler answers the malformed request itself
    if key.allows_model(req.model):
        return None
    if req.alt_model is not None and key.allows_model(req.alt_model):
        snap = request.app[BALANCER].view.snapshot
        # The gateway prefix is dropped only when no pod has the prefixed name (proxy rule).
        if not any(s.has_installed(req.key) or s.resident_model(req.key) for s in snap.backends):
            return None
    return error_response(
        request.path, 403, f"key '{key.name}' may not use model '{req.model[:200]}'"
    )


async def _read_body(request: web.Request, timeout: float) -> bytes | web.StreamResponse:
    """The body (aiohttp caches it for the handler), or a 408 if the client is too slow."""
    limit = request.app[SECURITY].settings.max_body_bytes
    try:
        if request.content_length is not None and request.content_length > limit:
            # Refuse at once instead of waiting for bytes that will be refused anyway.
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        resp = error_response(request.path, 408, f"request body not received within {timeout:g}s")
        resp.force_close()
        return resp
    except web.HTTPRequestEntityTooLarge:
        resp = error_response(
            request.path, 413, f"request body too large: the limit is {limit} bytes"
        )
        resp.force_close()  # the unread body must not be parsed as the next request
        return resp


@web.middleware
async def _body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in _BODY_METHODS and request.can_read_body:
        raw = await _read_body(request, request.app[SECURITY].settings.client_body_timeout)
        if isinstance(raw, web.StreamResponse):
            return raw
    return await handler(request)


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
