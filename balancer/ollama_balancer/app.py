"""The balancer's aiohttp application: routes, middleware and lifecycle.

Lifecycles go through ``cleanup_ctx``: the one transport to the pods is opened there
(and closed on exit), the poller and discovery tasks started there and cancelled and
awaited on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ollama_wire import OLLAMA_VERSION
from ollama_wire.names import InvalidModelName, canonical

from .admin import Admin
from .backends import Discovery
from .core.auth import KeyState
from .core.errors import NotFound
from .core.fleet import PollResult
from .core.ledger import Ledger
from .core.listings import api_ps, api_tags, fleet_version, v1_model, v1_models
from .core.record import RequestRecord
from .core.routes import ROUTES, Kind
from .observability import install as install_observability
from .pipeline import front_door
from .polling import FleetTracker, Poller
from .proxy import Proxy
from .security import SECURITY, attach_server, install_security, runner_kwargs
from .settings import BalancerSettings
from .shared.factory import create_shared_state
from .state import BALANCER, Balancer
from .telemetry import get_logger
from .upstream import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["OPS_PATHS", "create_app", "ops_app", "serve"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: BalancerSettings,
    *,
    discovery: Discovery | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_record: Callable[[RequestRecord], None] | None = None,
    tracer: Tracer | None = None,
) -> web.Application:
    """The balancer's application; ``tracer`` (from :func:`ollama_wire.tracing.tracing_from_env`)
    traces its requests, None (tracing off) traces none."""
    app = web.Application(client_max_size=settings.proxy.max_body_bytes, middlewares=[front_door])
    view = FleetTracker(clock)
    ledger = Ledger(settings.routing.default_load_seconds, settings.routing.default_service_seconds)
    # Built here, opened by the lifecycle: everything that talks to pods is handed it now.
    transport = Transport(connect_timeout=settings.proxy.connect_timeout, clock=clock)
    holder: dict[str, Balancer] = {}
    rng = rng or random.Random()
    quotas: dict[str, KeyState] = {}  # per-key limits, local (and the fallback's)
    shared = create_shared_state(
        settings, ledger, clock=clock, quotas=quotas, log=get_logger("ollama_fleet.shared")
    )
    proxy = Proxy(settings, view, ledger, transport, rng=rng, clock=clock, shared=shared)
    bal = Balancer(
        settings=settings,
        view=view,
        ledger=ledger,
        shared=shared,
        transport=transport,
        proxy=proxy,
        admin=Admin(
            settings, lambda: holder["b"].routable_states(), transport, witness=proxy.witness
        ),
        discovery=discovery,
        clock=clock,
        tracer=tracer,
    )
    if on_record is not None:
        bal.records.append(on_record)
    holder["b"] = bal
    app[BALANCER] = bal
    install_observability(app)  # before the first set_backends, so "joined" is seen
    install_security(app, quotas)  # API keys and their quotas (enforced by the pipeline)
    if discovery is None and settings.discovery.kind == "static":
        view.set_backends(settings.discovery.static_backends())
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app, bal)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    bal = app[BALANCER]
    s = bal.settings
    # The connections to the pods live exactly as long as the application.
    async with bal.transport:
        bal.poller = Poller(
            bal.transport,
            bal.view,
            interval=s.polling.interval,
            jitter=s.polling.jitter,
            timeout=s.polling.timeout,
            fail_threshold=s.routing.fail_threshold,
            clock=bal.clock,
            on_result=_fan_out(bal.polls),
        )
        tasks: list[asyncio.Task[None]] = []
        if bal.discovery is not None:
            tasks.append(asyncio.create_task(bal.discovery.run(bal.view.set_backends)))
        # First poll before serving, so the first request sees the fleet.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.polling.timeout + 1):
                await bal.poller.poll_all()
        tasks.append(asyncio.create_task(bal.poller.run()))
        await bal.shared.start()  # never fails: an unreachable store means local state for now
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bal.shared.close()


def _fan_out(listeners: list[Callable[[PollResult], None]]) -> Callable[[PollResult], None]:
    def notify(result: PollResult) -> None:
        for listener in listeners:
            listener(result)

    return notify


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
        try:
            key: str | None = canonical(ident)
        except InvalidModelName:
            key = None
        found = v1_model(bal.routable_states(), key, ident) if key else None
        if found is None:
            raise NotFound(f"model '{ident}' not found")
        return web.json_response(found)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        routable = bal.routable()
        ready = bool(routable) and not bal.draining
        body = {"ready": ready, "routable": routable, "draining": bal.draining}
        return web.json_response(body, status=200 if ready else 503)

    handlers: dict[str, Handler] = {
        "/": root,
        "/api/version": version,
        "/api/tags": tags,
        "/api/ps": ps,
        "/v1/models": models,
        "/v1/models/{model}": model,
        "/api/pull": bal.admin.handle,
        "/api/delete": bal.admin.handle,
        "/api/create": bal.admin.handle,
        "/api/copy": bal.admin.handle,
        "/api/push": bal.admin.handle,
        "/api/blobs/{digest}": bal.admin.handle,
        "/healthz": healthz,
        "/readyz": readyz,
    }
    for spec in ROUTES:
        handler = bal.proxy.handle if spec.kind is Kind.INFERENCE else handlers.get(spec.path)
        if handler is None:
            continue  # /metrics and /-/*: observability adds them
        for method in spec.methods:
            app.router.add_route(method, spec.path, handler)


#: Paths the operations port serves (health, metrics, fleet view), never behind keys.
OPS_PATHS = tuple(r.path for r in ROUTES if r.kind is Kind.OPS and r.path != "/")


def ops_app(app: web.Application) -> web.Application:
    """A second application serving ``app``'s operational endpoints (for ``ops_port``).

    It shares the handlers (and so the balancer's state) but none of the proxy
    routes, middlewares or lifecycle: Kubernetes probes and Prometheus scrape it
    while the main port may require API keys.
    """
    ops = web.Application(middlewares=[front_door])
    ops[BALANCER] = app[BALANCER]
    for resource in app.router.resources():
        if resource.canonical in OPS_PATHS:
            for route in resource:
                if route.method != "HEAD":
                    ops.router.add_route(route.method, resource.canonical, route.handler)
    return ops


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
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
        **runner_kwargs(app[BALANCER].settings.security),
    )
    await runner.setup()
    if SECURITY in app:  # the operations app has no connection cap of its own
        attach_server(app, runner.server)
    # reuse_port: several worker processes listen on one port and the kernel spreads
    # connections between them (SO_REUSEPORT).
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
    return runner, bound
