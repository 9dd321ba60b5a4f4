"""``ollama-fleet operator``: run the ModelPool operator.

Every flag also reads ``OLLAMA_FLEET_OPERATOR_<NAME>`` (e.g.
``OLLAMA_FLEET_OPERATOR_NAMESPACES=ollama,ml``); the flag wins.  The flags are generated
from :class:`~.settings.OperatorSettings`, one section per group.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from ollama_wire import config
from ollama_wire.loop import run as run_loop
from ollama_wire.tracing import tracing_from_env

from . import logs
from .settings import ENV_PREFIX, OperatorSettings

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}RESYNC_SECONDS)."
    )
    config.add_arguments(parser, OperatorSettings)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        settings = OperatorSettings.from_sources(vars(args), environ)
    except ValueError as exc:
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    try:
        tracing = tracing_from_env(environ, service_name=SERVICE_NAME, scope="modelpool_operator")
    except ValueError as exc:  # TracingError: a protocol this build cannot export
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.process.log_format, settings.process.log_level)
    # Imported here so `ollama-fleet --help` does not pay for kopf and kubernetes.
    from .handlers import run_operator

    try:
        run_loop(
            run_operator(settings, tracer=tracing.tracer if tracing is not None else None),
            environ,
        )
    except ValueError as exc:
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    finally:
        if tracing is not None:
            tracing.shutdown()  # the last reconciles' spans, exported before exit
    return 0


#: service.name of the operator's spans unless OTEL_SERVICE_NAME says otherwise.
SERVICE_NAME = "ollama-fleet-operator"
