"""``ollama-fleet operator``: run the ModelPool operator.

Every flag also reads ``OLLAMA_FLEET_OPERATOR_<NAME>`` (e.g.
``OLLAMA_FLEET_OPERATOR_NAMESPACES=ollama,ml``); the flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping

from .settings import ENV_PREFIX, OperatorSettings

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}RESYNC_SECONDS)."
    )
    add = parser.add_argument
    add(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=argparse.SUPPRESS,
        help="namespace to watch (repeatable; default: default)",
    )
    add(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=argparse.SUPPRESS,
        help="watch every namespace (needs the ClusterRole RBAC)",
    )
    add(
        "--resync-seconds",
        type=float,
        default=argparse.SUPPRESS,
        help="reconcile every pool at least this often (default 60): Ollama evicts silently",
    )
    add(
        "--concurrency",
        type=int,
        default=argparse.SUPPRESS,
        help="pods worked on at once (default 4)",
    )
    add(
        "--attempts",
        type=int,
        default=argparse.SUPPRESS,
        help="attempts per Ollama action (default 3)",
    )
    add(
        "--backoff-seconds",
        type=float,
        default=argparse.SUPPRESS,
        help="first retry delay (default 1)",
    )
    add(
        "--ollama-timeout-seconds",
        type=float,
        default=argparse.SUPPRESS,
        help="timeout of /api/tags and /api/ps (default 5)",
    )
    add(
        "--load-timeout-seconds",
        type=float,
        default=argparse.SUPPRESS,
        help="warm-load timeout (default 600)",
    )
    add(
        "--pull-idle-timeout-seconds",
        type=float,
        default=argparse.SUPPRESS,
        help="abandon a silent pull stream after this long (default 300)",
    )
    add(
        "--max-rounds",
        type=int,
        default=argparse.SUPPRESS,
        help="observe/plan/execute passes per reconcile (default 3)",
    )
    add(
        "--default-vram-bytes",
        default=argparse.SUPPRESS,
        help="VRAM of pods with no annotation and no pool default, e.g. 24Gi (default unlimited)",
    )
    add(
        "--kubeconfig",
        default=argparse.SUPPRESS,
        help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)",
    )
    add("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    add(
        "--peering",
        default=argparse.SUPPRESS,
        help="kopf peering object; given, peering is mandatory (default: ollama-fleet if it "
        "exists, else standalone)",
    )
    add(
        "--standalone",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no peering: for a single replica, tests and development",
    )
    add(
        "--priority",
        default=argparse.SUPPRESS,
        help="peering priority of this replica: an integer, or 'random' (1..1000000) so "
        "replicas of one Deployment differ (default 0; the highest acts)",
    )
    add(
        "--identity",
        default=argparse.SUPPRESS,
        help="this replica's name in the peering object and its Events (default hostname/pid)",
    )
    add(
        "--liveness",
        default=argparse.SUPPRESS,
        help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    add("--log-level", default="INFO", help="Python log level")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if flags.get("namespaces"):
        flags["namespaces"] = tuple(flags["namespaces"])
    try:
        settings = OperatorSettings.from_sources(flags, environ)
    except ValueError as exc:
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=str(flags.get("log_level") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported here so `ollama-fleet --help` does not pay for kopf and kubernetes.
    from .handlers import run_operator

    try:
        asyncio.run(run_operator(settings))
    except ValueError as exc:  # e.g. the peering object in only some watched namespaces
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    return 0
