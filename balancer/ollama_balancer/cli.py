"""``ollama-fleet balancer``: run the load balancer until SIGTERM, then drain."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Mapping

from aiohttp import web

from ollama_wire.loop import loop_name
from ollama_wire.loop import run as run_loop
from ollama_wire.tracing import Tracing, TracingError, tracing_from_env

from .app import create_app, ops_app, serve
from .backends import Discovery
from .settings import BalancerSettings, SettingsError, add_arguments, load_settings
from .state import BALANCER, Balancer
from .workers import command_line, detect_cpus, supervise, worker_overrides

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Model-aware reverse proxy for a fleet of Ollama servers. Every setting can come "
        "from a flag, an OLLAMA_FLEET_* environment variable or the --config YAML file "
        "(flags win, then environment, then the file)."
    )
    add_arguments(parser)


def build_discovery(settings: BalancerSettings) -> Discovery | None:
    """The discovery loop ``settings.discovery`` asks for (None for a static list)."""
    if settings.discovery.kind == "static":
        return None
    from . import discovery  # imported lazily: pulls in the kubernetes client

    return discovery.build(settings.discovery)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        settings = load_settings(args, environ)
    except SettingsError as exc:
        print(f"ollama-fleet balancer: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.discovery.kind == "static" and not settings.discovery.backends:
        print(
            "ollama-fleet balancer: no backends: pass --backends URL[,URL...] "
            "(or OLLAMA_FLEET_BACKENDS), or choose --discovery dns|kubernetes",
            file=sys.stderr,
        )
        return 2
    from ollama_wire.logs import configure_logging

    configure_logging(settings.process.log_format, settings.process.log_level)
    overrides = worker_overrides(environ)
    if overrides is not None:  # one of a supervisor's workers
        settings = settings.replace(**overrides)
    count = settings.process.workers or detect_cpus()
    if count > 1:  # the supervisor serves no request: each worker traces its own
        return run_loop(supervise(settings, count, command_line()), environ)
    try:
        tracing = tracing_from_env(environ, service_name=SERVICE_NAME, scope="ollama_balancer")
    except TracingError as exc:
        print(f"ollama-fleet balancer: configuration error: {exc}", file=sys.stderr)
        return 2
    return run_loop(_main(settings, tracing), environ)


#: service.name of the balancer's spans unless OTEL_SERVICE_NAME says otherwise.
SERVICE_NAME = "ollama-fleet-balancer"


async def _main(settings: BalancerSettings, tracing: Tracing | None = None) -> int:
    app = create_app(
        settings,
        discovery=build_discovery(settings),
        tracer=tracing.tracer if tracing is not None else None,
    )
    runner, port = await serve(
        app,
        settings.listen.host,
        settings.listen.port,
        shutdown_timeout=settings.process.drain_grace,
        reuse_port=settings.listen.reuse_port,
    )
    bal = app[BALANCER]
    loop = asyncio.get_running_loop()
    print(
        # The URL ends the line: scripts and tests take its last word.
        f"ollama-fleet balancer ({loop_name(loop)}) listening on http://{settings.listen.host}:{port}",
        flush=True,
    )
    ops_runner = None
    if settings.listen.ops_port:
        ops_host = settings.listen.ops_host or settings.listen.host
        ops_runner, ops_port = await serve(ops_app(app), ops_host, settings.listen.ops_port)
        print(f"ollama-fleet operations endpoints on http://{ops_host}:{ops_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(bal, runner, settings)
    if ops_runner is not None:
        await ops_runner.cleanup()
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)  # the last spans, exported before exit
    return 0


async def drain(bal: Balancer, runner: web.AppRunner, settings: BalancerSettings) -> None:
    """SIGTERM: unready at once, keep accepting for drain_delay, then let in-flight finish."""
    bal.draining = True
    if settings.process.drain_delay > 0:
        await asyncio.sleep(settings.process.drain_delay)
    # cleanup() stops listening, waits up to shutdown_timeout (drain_grace) for
    # in-flight handlers, then cancels the rest and closes upstream connections.
    await runner.cleanup()
