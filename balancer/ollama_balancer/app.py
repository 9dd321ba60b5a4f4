"""The balancer's aiohttp application: routes, middleware and lifecycle.

Lifecycles go through ``cleanup_ctx``: one ClientSession per process, the
poller and discovery tasks started there and cancelled and awaited on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from ollama_wire import OLLAMA_VERSION
from ollama_wire.names import InvalidModelName, canonical

from .admin import Admin
from .backends import Discovery
from .fleet import PollResult
from .ledger import Ledger
from .limits import SECURITY, attach_server, install_security, runner_kwargs
from .observability import install as install_observability
from .polling import FleetView, Poller
from .proxy import Proxy, RequestRecord, error_response, request_id
from .settings import BalancerSettings
from .state import BALANCER, Balancer
from .views import api_ps, api_tags, fleet_version, v1_model, v1_models

__all__ = ["BALANCER", "OPS_PATHS", "Balancer", "create_app", "ops_app", "serve"]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _ollama_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request ids on every answer; unknown routes answered like Ollama (gin)."""
    rid = request_id(request)
    try:
        resp = await handler(request)
    except web.HTTPNotFound:
        resp = web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        resp = web.Response(status=405, text="405 method not allowed")
    except web.HTTPRequestEntityTooLarge:
        resp = error_response(request.path, 413, "request body too large")
    if not resp.prepared:
        resp.headers.setdefault("X-Request-ID", rid)
    return resp


def create_app(
    settings: BalancerSettings,
    *,
    discovery: Discovery | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_ollama_errors])
    view = FleetView(clock)
    ledger = Ledger(settings.default_load_seconds, settings.default_service_seconds)
    holder: dict[str, Balancer] = {}

    def session() -> aiohttp.ClientSession:
        return holder["b"].http()

    def record(r: RequestRecord) -> None:
        for listener in holder["b"].records:
            listener(r)

    rng = rng or random.Random()
    proxy = Proxy(settings, view, ledger, session, rng=rng, clock=clock, on_record=record)
    bal = Balancer(
        settings=settings,
        view=view,
        ledger=ledger,
        proxy=proxy,
        admin=Admin(settings, view, session, clock),
        discovery=discovery,
        clock=clock,
    )
    if on_record is not None:
        bal.records.append(on_record)
    holder["b"] = bal
    app[BALANCER] = bal
    install_observability(app)  # before the first set_backends, so "joined" is seen
    install_security(app, bal.records)  # API keys, per-key limits, slow clients, conn cap
    if discovery is None and settings.discovery == "static":
        view.set_backends(settings.static_backends())
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app, bal)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    bal = app[BALANCER]
    s = bal.settings
    connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
    bal.session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    bal.poller = Poller(
        bal.session,
        bal.view,
        interval=s.poll_interval,
        jitter=s.poll_jitter,
        timeout=s.poll_timeout,
        fail_threshold=s.fail_threshold,
        clock=bal.clock,
        on_result=_fan_out(bal.polls),
    )
    tasks: list[asyncio.Task[None]] = []
    if bal.discovery is not None:
        tasks.append(asyncio.create_task(bal.discovery.run(bal.view.set_backends)))
    # First poll before serving, so the first request sees the fleet.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(s.poll_timeout + 1):
            await bal.poller.poll_all()
    tasks.append(asyncio.create_task(bal.poller.run()))
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bal.session.close()
        bal.session = None


def _fan_out(listeners: list[Callable[[PollResult], None]]) -> Callable[[PollResult], None]:
    def notify(result: PollResult) -> None:
        for listener in listeners:
            listener(result)

    return notify


def _model_key(name: str) -> str | None:
    try:
        return canonical(name)
    except InvalidModelName:
        return None


def _add_routes(app: web.Application, bal: Balancer) -> None:
    async def root(request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    async def version(request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": fleet_version(bal.routable_states(), OLLAMA_VERSION)})

    async def tags(request: web.Request) -> web.StreamResponse:
        return web.json_response(api_tags(bal.routable_states()))

    async def ps(request: web.Request) -> web.StreamResponse:
        return web.json_response(api_ps(bal.routable_states()))

    async def models(request: web.Request) -> web.StreamResponse:
        return web.json_response(v1_models(bal.routable_states()))

    async def model(request: web.Request) -> web.StreamResponse:
        ident = request.match_info["model"]
        key = _model_key(ident)
        found = v1_model(bal.routable_states(), key, ident) if key else None
        if found is None:
            return error_response(request.path, 404, f"model '{ident}' not found")
        return web.json_response(found)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        routable = bal.routable()
        ready = bool(routable) and not bal.draining
        body = {"ready": ready, "routable": routable, "draining": bal.draining}
        return web.json_response(body, status=200 if ready else 503)

    r = app.router
    r.add_get("/", root)  # GET also answers HEAD
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_route("GET", "/api/ps", ps)
    r.add_route("GET", "/v1/models", models)
    r.add_route("GET", "/v1/models/{model}", model)
    r.add_route("GET", "/healthz", healthz)
    r.add_route("GET", "/readyz", readyz)
    for path in (
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ):
        r.add_route("POST", path, bal.proxy.handle)
    r.add_route("POST", "/api/pull", bal.admin.pull)
    r.add_route("DELETE", "/api/delete", bal.admin.delete)
    for path in ("/api/create", "/api/copy", "/api/push"):
        r.add_route("POST", path, bal.admin.deny)
    r.add_route("*", "/api/blobs/{digest}", bal.admin.deny)


#: Paths the operations port serves (health, metrics, fleet view), never behind keys.
OPS_PATHS = ("/healthz", "/readyz", "/metrics", "/-/fleet", "/-/dashboard")


def ops_app(app: web.Application) -> web.Application:
    """A second application serving ``app``'s operational endpoints (for ``ops_port``).

    It shares the handlers (and so the balancer's state) but none of the proxy
    routes, middlewares or lifecycle: Kubernetes probes and Prometheus scrape it
    while the main port may require API keys.
    """
    ops = web.Application(middlewares=[_ollama_errors])
    ops[BALANCER] = app[BALANCER]
    for resource in app.router.resources():
        if resource.canonical in OPS_PATHS:
            for route in resource:
                if route.method != "HEAD":
                    ops.router.add_route(route.method, resource.canonical, route.handler)
    return ops


async def serve(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 30.0
) -> tuple[web.AppRunner, int]:
    """Start ``app`` on host:port; returns the runner and the bound port.

    ``handler_cancellation`` makes a client disconnect cancel its handler, so
    the proxy closes the upstream connection at once and Ollama stops work.
    """
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        **runner_kwargs(app[BALANCER].settings),
    )
    await runner.setup()
    if SECURITY in app:  # the operations app has no connection cap of its own
        attach_server(app, runner.server)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
    return runner, bound
