"""The aiohttp application of one emulated node: routing quirks, faults, control endpoints.

gin quirks reproduced here: unknown paths answer ``404 page not found`` and
known paths with another method ``405 method not allowed``, both ``text/plain``;
errors raised before the first byte take the shape of the path (native,
OpenAI or Anthropic).  zstd bodies are decoded where Ollama decodes them, and
refused in the native shape on every path, as Ollama's decoder runs before the
OpenAI and Anthropic writers.  Control endpoints live under ``/-/emulator/``
(a path Ollama never serves) and bypass faults and counters.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ollama_wire.bodies import BodyError, decodes_zstd, request_body
from ollama_wire.errors import error_body_for, ollama_error_body

from . import anthropic, create, handlers, openai
from .guard import host_allowed, origin_allowed
from .keys import GO_AWAY, NODE
from .state import NodeState
from .streams import BODY_KEY, DROP_KEY, ApiError, abort, json_response, read_json
from .wire import rfc3339

__all__ = ["CONTROL_PREFIX", "build_app"]

CONTROL_PREFIX = "/-/emulator/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _plain(status: int, text: str) -> web.Response:
    # gin writes exactly "text/plain" (no charset) for these.
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": "text/plain"})


@web.middleware
async def gin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return _plain(405, "405 method not allowed")
    except web.HTTPNotFound:
        return _plain(404, "404 page not found")
    except ApiError as exc:
        return json_response(error_body_for(request.path, exc.status, exc.message), exc.status)
    except ConnectionResetError:
        # The client closed while an answer was being written (a balancer taking a slot
        # back, a user pressing stop): Ollama notes it and moves on, no error.  A fault that
        # dropped the connection on purpose raises this too; either way nobody reads on.
        if request.transport is not None and not request.transport.is_closing():
            raise
        return web.Response(status=499)


@web.middleware
async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    # CORS first, then the Host check, both answered with an empty 403 like Ollama.
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    host = request.headers.get("Host")
    if not origin_allowed(request.headers.get("Origin"), host) or not host_allowed(host):
        request.app[NODE].stats.requests["403 host/origin"] += 1
        return web.Response(status=403)
    return await handler(request)


@web.middleware
async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    node = request.app[NODE]
    node.stats.requests[request.path] += 1
    knobs = node.faults
    if knobs.latency:
        await node.clock.sleep(knobs.latency)
    if knobs.take_hang(request.path):
        node.stats.faults_injected += 1
        await asyncio.Event().wait()  # until the client gives up (handler cancellation)
    failure = knobs.take_failure(request.path)
    if failure is not None:
        node.stats.faults_injected += 1
        if failure.body is not None:
            return web.Response(
                status=failure.status, text=failure.body, content_type="application/json"
            )
        body = error_body_for(request.path, failure.status, failure.message)
        return json_response(body, failure.status)
    drop = knobs.take_drop(request.path)
    if drop is None:
        return await handler(request)
    node.stats.faults_injected += 1
    request[DROP_KEY] = drop
    try:
        response = await handler(request)
        if not response.prepared and drop == 0:
            abort(request)  # a non-streamed answer counts as one chunk
    except ConnectionResetError:
        raise asyncio.CancelledError from None  # aiohttp treats it as a client disconnect
    return response


@web.middleware
async def zstd_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``cloudPassthroughMiddleware``'s decoding step, after the guards, before the handler."""
    if decodes_zstd(request.path, request.headers.get("Content-Encoding")):
        try:
            request[BODY_KEY] = request_body(
                request.path, request.headers.get("Content-Encoding"), await request.read()
            )
        except BodyError as exc:
            return json_response(ollama_error_body(exc.message), exc.status)
    return await handler(request)


async def state(request: web.Request) -> web.Response:
    node = request.app[NODE]
    sched = node.scheduler
    runners = []
    for r in sched.runners.values():
        runners.append(
            {
                "name": r.name,
                "digest": r.spec.digest,
                "num_ctx": r.num_ctx,
                "num_parallel": r.num_parallel,
                "refcount": r.refcount,
                "in_flight": r.in_flight,
                "waiting": r.waiting,
                "keep_alive": None if math.isinf(r.keep_alive) else r.keep_alive,
                "draining": r.draining,
                "size": r.size,
                "size_vram": r.size_vram,
                "expires_at": rfc3339(r.expires_at_ns),
            }
        )
    doc: dict[str, Any] = {
        "name": node.name,
        "url": node.url,
        "vram_bytes": node.config.vram_bytes,
        "vram_used": sched.vram_used,
        "num_parallel": node.config.num_parallel,
        "max_queue": node.config.max_queue,
        "max_loaded_models": node.config.max_loaded_models,
        "loading": sched.loading.name if sched.loading else None,
        "pending": sched.pending,
        "runners": runners,
        "installed": [m.display for m in node.library.models()],
        "stats": node.stats.snapshot(),
        "faults": node.faults.describe(),
    }
    return json_response(doc)


async def generations(request: web.Request) -> web.Response:
    """The last generations started (slot, prompt tokens, cached tokens, outcome), oldest first."""
    return json_response({"generations": request.app[NODE].stats.records()})


async def set_faults(request: web.Request) -> web.Response:
    """Apply fault knobs; ``{"go_away": {"seconds": s}}`` closes the socket for ``s`` emulated s."""
    node = request.app[NODE]
    doc = await read_json(request, "faults")
    away = doc.pop("go_away", None)
    try:
        node.faults.apply(doc)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    if away is not None:
        request.app[GO_AWAY](float(away.get("seconds", 1.0)))
    return json_response(node.faults.describe())


async def clear_faults(request: web.Request) -> web.Response:
    request.app[NODE].faults.clear()
    return json_response(request.app[NODE].faults.describe())


def build_app(node: NodeState, *, go_away: Callable[[float], None]) -> web.Application:
    """The app serving ``node``; its control endpoint closes the socket with ``go_away(s)``."""
    app = web.Application(
        middlewares=[gin_errors, host_guard, faults, zstd_bodies], client_max_size=64 * 2**20
    )
    app[NODE] = node
    app[GO_AWAY] = go_away
    app.add_routes(handlers.routes)
    app.add_routes(create.routes)
    app.add_routes(openai.routes)
    app.add_routes(anthropic.routes)
    app.router.add_get(CONTROL_PREFIX + "state", state)
    app.router.add_get(CONTROL_PREFIX + "generations", generations)
    app.router.add_post(CONTROL_PREFIX + "faults", set_faults)
    app.router.add_delete(CONTROL_PREFIX + "faults", clear_faults)
    return app
