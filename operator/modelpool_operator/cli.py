"""``ollama-fleet operator``: run the ModelPool operator.

Every flag also reads ``OLLAMA_FLEET_OPERATOR_<NAME>`` (e.g.
``OLLAMA_FLEET_OPERATOR_NAMESPACES=ollama,ml``); the flag wins.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from ollama_wire.logs import LogFormat
from ollama_wire.loop import run as run_loop

from . import logs
from .settings import ENV_PREFIX, LOG_LEVELS, OperatorSettings

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}RESYNC_SECONDS)."
    )
    parser.add_argument(
        "-n", "--namespace", dest="namespaces", action="append", default=argparse.SUPPRESS,
        help="namespace to watch (repeatable; default: default)",
    )  # fmt: skip
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", default=argparse.SUPPRESS,
        help="watch every namespace (needs the ClusterRole RBAC)",
    )  # fmt: skip
    parser.add_argument(
        "--standalone", action="store_true", default=argparse.SUPPRESS,
        help="no peering: for a single replica, tests and development",
    )  # fmt: skip
    for flag, kind, help_text in _OPTIONS:
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)
    parser.add_argument(
        "--log-format", choices=[f.value for f in LogFormat], default=argparse.SUPPRESS,
        help="json: one JSON object per line, kopf's records included; console: readable "
        "lines; auto: JSON unless stderr is a terminal (default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, type=str.lower, default=argparse.SUPPRESS,
        help="least severe level logged (default info)",
    )  # fmt: skip


#: (flag, type, help) of every valued option; defaults live in OperatorSettings.
_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--resync-seconds", float,
     "reconcile every pool at least this often (default 60): Ollama evicts silently"),
    ("--concurrency", int, "pods worked on at once (default 4)"),
    ("--attempts", int, "attempts per Ollama action (default 3)"),
    ("--backoff-seconds", float, "first retry delay (default 1)"),
    ("--ollama-timeout-seconds", float, "timeout of /api/tags and /api/ps (default 5)"),
    ("--load-timeout-seconds", float, "warm-load timeout (default 600)"),
    ("--pull-idle-timeout-seconds", float,
     "abandon a silent pull stream after this long (default 300)"),
    ("--max-rounds", int, "observe/plan/execute passes per reconcile (default 3)"),
    ("--default-vram-bytes", str,
     "VRAM of pods with no annotation and no pool default, e.g. 24Gi (default unlimited)"),
    ("--kubeconfig", str, "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"),
    ("--context", str, "kubeconfig context"),
    ("--peering", str,
     "kopf peering object; given, peering is mandatory (default: ollama-fleet if it exists, "
     "else standalone)"),
    ("--priority", str,
     "peering priority of this replica: an integer, or 'random' (1..1000000) so replicas of "
     "one Deployment differ (default 0; the highest acts)"),
    ("--identity", str,
     "this replica's name in the peering object and its Events (default hostname/pid)"),
    ("--liveness", str, "liveness endpoint, e.g. http://0.0.0.0:8080/healthz"),
    ("--metrics-port", int, "serve Prometheus metrics on GET /metrics here (default 0 = off)"),
    ("--metrics-host", str, "address of the metrics port (default 0.0.0.0)"),
)  # fmt: skip


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if flags.get("namespaces"):
        flags["namespaces"] = tuple(flags["namespaces"])
    try:
        settings = OperatorSettings.from_sources(flags, environ)
    except ValueError as exc:
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    # Imported here so `ollama-fleet --help` does not pay for kopf and kubernetes.
    from .handlers import run_operator

    try:
        run_loop(run_operator(settings), environ)
    except ValueError as exc:  # e.g. the peering object in only some watched namespaces
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    return 0
