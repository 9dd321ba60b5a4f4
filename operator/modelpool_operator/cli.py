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
        help="no leader election: act at once (one replica, tests, development)",
    )  # fmt: skip
    parser.add_argument(
        "--no-manifest-lookup", dest="manifest_lookup", action="store_false",
        default=argparse.SUPPRESS,
        help="do not ask the registry for model sizes before pulling",
    )  # fmt: skip
    parser.add_argument(
        "--balancer-url", dest="balancer_urls", action="append", default=argparse.SUPPRESS,
        help="a balancer base URL whose /-/fleet demand autoscaled models follow "
        "(repeatable; summed with --balancer-service's replicas)",
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
    ("--pin-check-seconds", float,
     "between resyncs, check pinned copies on their pods this often (default 2)"),
    ("--concurrency", int, "pulls at once over all pods (default 4)"),
    ("--pulls-per-pod", int, "pulls at once on one pod (default 2)"),
    ("--reconcile-concurrency", int, "pools observing and planning at once (default 8)"),
    ("--attempts", int, "attempts per Ollama action (default 3)"),
    ("--backoff-seconds", float, "first retry delay (default 1)"),
    ("--ollama-timeout-seconds", float, "timeout of /api/tags and /api/ps (default 5)"),
    ("--load-timeout-seconds", float, "warm-load timeout (default 600)"),
    ("--pull-idle-timeout-seconds", float,
     "abandon a silent pull stream after this long (default 300)"),
    ("--status-interval-seconds", float,
     "at most one status write per pool this often while work runs (default 1)"),
    ("--registry-mirrors", str,
     "where to ask for manifests instead of the registry host, e.g. "
     "registry.ollama.ai=http://mirror:5000 (comma-separated)"),
    ("--manifest-timeout-seconds", float, "timeout of a manifest request (default 5)"),
    ("--default-vram-bytes", str,
     "VRAM of pods with no annotation and no pool default, e.g. 24Gi (default unlimited)"),
    ("--kubeconfig", str, "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"),
    ("--context", str, "kubeconfig context"),
    ("--lease-name", str,
     "coordination.k8s.io Lease for leader election; only its holder acts "
     "(default ollama-fleet-operator)"),
    ("--lease-namespace", str, "namespace of the Lease (default: the first watched one)"),
    ("--lease-seconds", float,
     "lease duration: a standby takes over this long after the leader stopped (default 10)"),
    ("--identity", str,
     "this replica's name in the Lease and its Events (default hostname/pid)"),
    ("--balancer-service", str,
     "the balancer's ops Service, NAMESPACE/NAME: every ready replica's /-/fleet demand is "
     "summed for autoscaled models"),
    ("--balancer-port", str,
     "port name or number on that Service's endpoints (default: ops, else http)"),
    ("--demand-interval-seconds", float, "poll the balancer's demand this often (default 5)"),
    ("--demand-window-seconds", float,
     "autoscaling follows the mean demand of this many last seconds (default 60)"),
    ("--release-keep-alive-seconds", float,
     "keep_alive of a model's last copy when it scales to zero: Ollama unloads it this long "
     "after its last request (default 300)"),
    ("--liveness", str, "liveness endpoint, e.g. http://0.0.0.0:8080/healthz"),
    ("--metrics-port", int, "serve Prometheus metrics on GET /metrics here (default 0 = off)"),
    ("--metrics-host", str, "address of the metrics port (default 0.0.0.0)"),
)  # fmt: skip


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    for name in ("namespaces", "balancer_urls"):
        if flags.get(name):
            flags[name] = tuple(flags[name])
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
    except ValueError as exc:
        print(f"ollama-fleet operator: {exc}", file=sys.stderr)
        return 2
    return 0
