"""Operator settings: typed, grouped, read once from flags and the environment.

Precedence: command-line flag, then ``OLLAMA_FLEET_OPERATOR_*`` variable, then
the default here.  Only :func:`modelpool_operator.cli.run` builds these; nothing
else looks at the environment.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ollama_wire.kubesource import kubeconfig_path
from ollama_wire.logs import LogFormat

from .spec import parse_quantity

__all__ = [
    "DEFAULT_PEERING",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "RANDOM_PRIORITY_MAX",
    "OperatorSettings",
]

ENV_PREFIX = "OLLAMA_FLEET_OPERATOR_"
DEFAULT_PEERING = "ollama-fleet"
LOG_LEVELS = ("debug", "info", "warning", "error")
RANDOM_PRIORITY_MAX = 1_000_000
"""``--priority random`` draws from 1..this; a priority above it always wins (development)."""


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty with ``all_namespaces`` false means ``default``."""
    all_namespaces: bool = False
    """Watch ModelPools and pods cluster-wide (needs the ClusterRole variant of the RBAC)."""
    resync_seconds: float = 60.0
    """Full reconcile of every pool at least this often: Ollama evicts models silently."""
    concurrency: int = 4
    """Pods worked on at once per reconcile (pulls are bandwidth-heavy)."""
    attempts: int = 3
    """Attempts per pull/load/unload/delete, first included."""
    backoff_seconds: float = 1.0
    """First retry delay; doubles per attempt, capped at 30 s."""
    ollama_timeout_seconds: float = 5.0
    """Timeout of /api/tags and /api/ps; a pod slower than this is reported unreachable."""
    load_timeout_seconds: float = 600.0
    """A warm load may take minutes (Ollama's own stall timeout is 5 m)."""
    pull_idle_timeout_seconds: float = 300.0
    """A pull stream silent for this long is abandoned (Ollama resumes it next time)."""
    max_rounds: int = 3
    """observe -> plan -> execute passes per reconcile (a pull of an unknown model needs 2)."""
    default_vram_bytes: int | None = None
    """VRAM of a pod with neither the annotation nor a pool default; None = unlimited."""
    kubeconfig: str | None = None
    """kubeconfig path (else the first of $KUBECONFIG); None = in-cluster service account,
    else ~/.kube/config (:mod:`ollama_wire.kubesource`, the balancer's rule too)."""
    context: str | None = None
    """kubeconfig context."""
    peering: str | None = None
    """kopf peering object: only the highest-priority operator replica acts.  None: use
    ``ollama-fleet`` if that object exists (in every watched namespace, or the cluster one
    with ``all_namespaces``), else run standalone.  A name given explicitly makes peering
    mandatory: kopf waits for the object rather than act without it."""
    standalone: bool = False
    """No peering (one replica, tests, development)."""
    priority: int = 0
    """This replica's peering priority (``random`` on the command line: 1..1000000).  Peers
    of equal priority all pause, so replicas of one Deployment need distinct ones."""
    identity: str | None = None
    """This replica's name in the peering object and as the ``reportingInstance`` of its
    Events; None = ``<hostname>/<pid>`` (the hostname is the pod name in Kubernetes)."""
    liveness: str | None = None
    """kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz."""
    metrics_port: int = 0
    """Serve Prometheus metrics on ``GET /metrics`` of this port (0 = off)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics port listens on."""
    home: str = "~"
    """Home directory for the default kubeconfig path (from $HOME)."""
    log_format: LogFormat = LogFormat.AUTO
    """``json`` (one object per line, kopf's records included), ``console``, or ``auto``
    (JSON unless stderr is a terminal): the balancer's rendering."""
    log_level: str = "info"
    """debug | info | warning | error."""

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> OperatorSettings:
        """Flags (None = not given) over ``OLLAMA_FLEET_OPERATOR_<NAME>`` over defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            given = flags.get(f.name)
            env = environ.get(ENV_PREFIX + f.name.upper())
            if given is not None and given != () and given is not False:
                values[f.name] = given
            elif env is not None and env != "":
                values[f.name] = _convert(f.name, env)
        values["kubeconfig"] = kubeconfig_path(values.get("kubeconfig"), environ) or None
        if "home" not in values and environ.get("HOME"):
            values["home"] = environ["HOME"]
        if isinstance(values.get("priority"), str):
            values["priority"] = parse_priority(values["priority"])
        if "log_format" in values:
            try:
                values["log_format"] = LogFormat(str(values["log_format"]).lower())
            except ValueError:
                choices = ", ".join(f.value for f in LogFormat)
                raise ValueError(f"log format must be one of {choices}") from None
        if isinstance(values.get("default_vram_bytes"), str):
            values["default_vram_bytes"] = parse_quantity(values["default_vram_bytes"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be 0..65535, not {self.metrics_port}")
        if self.resync_seconds <= 0:
            raise ValueError("resync interval must be > 0 seconds")
        if self.concurrency < 1 or self.attempts < 1 or self.max_rounds < 1:
            raise ValueError("concurrency, attempts and max rounds must be >= 1")
        if self.all_namespaces and self.namespaces:
            raise ValueError("--all-namespaces and --namespace are exclusive")
        if self.standalone and self.peering:
            raise ValueError("--standalone and --peering are exclusive")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        return self.namespaces or ("default",)

    @property
    def peering_name(self) -> str:
        return self.peering or DEFAULT_PEERING

    @property
    def own_identity(self) -> str:
        return self.identity or f"{socket.gethostname()}/{os.getpid()}"


def parse_priority(text: str) -> int:
    """An integer, or ``random`` (1..RANDOM_PRIORITY_MAX: distinct replicas, no coordination)."""
    if text.strip().lower() == "random":
        return random.SystemRandom().randint(1, RANDOM_PRIORITY_MAX)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"priority must be an integer or 'random', not {text!r}") from None


def _convert(name: str, text: str) -> Any:
    if name == "namespaces":
        return tuple(n.strip() for n in text.split(",") if n.strip())
    if name in ("all_namespaces", "standalone"):
        return _bool(text)
    if name in ("concurrency", "attempts", "max_rounds", "metrics_port"):
        return int(text)
    if name.endswith("_seconds"):
        return float(text)
    return text
