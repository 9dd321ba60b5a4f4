"""Operator settings: typed, grouped, read once from flags and the environment.

Precedence: command-line flag, then ``OLLAMA_FLEET_OPERATOR_*`` variable, then
the default here.  Only :func:`modelpool_operator.cli.run` builds these; nothing
else looks at the environment.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ollama_wire.kubesource import kubeconfig_path
from ollama_wire.logs import LogFormat

from .sizing import parse_mirrors
from .spec import parse_quantity

__all__ = ["DEFAULT_LEASE", "ENV_PREFIX", "LOG_LEVELS", "OperatorSettings"]

ENV_PREFIX = "OLLAMA_FLEET_OPERATOR_"
DEFAULT_LEASE = "ollama-fleet-operator"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    pin_check_seconds: float = 2.0
    """Between resyncs, ask the pods holding a pool's pinned copies for ``/api/ps`` this
    often: a copy a client reloaded with other options, or unpinned, is re-pinned at once."""
    concurrency: int = 4
    """Pulls running at once, over all pods and pools (they share the registry's bandwidth)."""
    pulls_per_pod: int = 2
    """Pulls running at once on one pod (loads there are one at a time regardless)."""
    reconcile_concurrency: int = 8
    """Pools observing and planning at once (their actions then run in the pod queues)."""
    attempts: int = 3
    """Attempts per pull/load/unload/delete, first included (verdicts are never retried)."""
    backoff_seconds: float = 1.0
    """First retry delay; doubles per attempt, capped at 30 s."""
    ollama_timeout_seconds: float = 5.0
    """Timeout of /api/tags and /api/ps; a pod slower than this is reported unreachable."""
    load_timeout_seconds: float = 600.0
    """A warm load may take minutes (Ollama's own stall timeout is 5 m)."""
    pull_idle_timeout_seconds: float = 300.0
    """A pull stream silent for this long is abandoned (Ollama resumes it next time)."""
    status_interval_seconds: float = 1.0
    """At most one status write per pool this often while work progresses."""
    manifest_lookup: bool = True
    """Learn a model's size from its registry manifest before pulling it anywhere."""
    registry_mirrors: tuple[tuple[str, str], ...] = ()
    """Registry host -> base URL to ask for manifests instead (``host=url,...``)."""
    manifest_timeout_seconds: float = 5.0
    """Timeout of a manifest request; on timeout the size is unknown and the pull goes ahead."""
    default_vram_bytes: int | None = None
    """VRAM of a pod with neither the annotation nor a pool default; None = unlimited."""
    kubeconfig: str | None = None
    """kubeconfig path (else the first of $KUBECONFIG); None = in-cluster service account,
    else ~/.kube/config (:mod:`ollama_wire.kubesource`, the balancer's rule too)."""
    context: str | None = None
    """kubeconfig context."""
    standalone: bool = False
    """No leader election: this process acts at once (one replica, tests, development)."""
    lease_name: str = DEFAULT_LEASE
    """The coordination.k8s.io Lease the replicas elect a leader with; only its holder acts."""
    lease_namespace: str | None = None
    """Namespace of the Lease; None = the first watched namespace (``default`` with
    ``all_namespaces``).  The chart passes the operator's own namespace."""
    lease_seconds: float = 10.0
    """Lease duration: a standby takes over this long after the leader's last renewal."""
    identity: str | None = None
    """This replica's name in the Lease and as the ``reportingInstance`` of its Events;
    None = ``<hostname>/<pid>`` (the hostname is the pod name in Kubernetes)."""
    balancer_service: str | None = None
    """Where the balancer's demand comes from (autoscaled ModelPool models): its ops Service,
    ``NAMESPACE/NAME`` (or ``NAME`` in the Lease's namespace).  Its Endpoints are read every
    poll (``get`` on endpoints) and every ready replica's ``/-/fleet`` is summed."""
    balancer_urls: tuple[str, ...] = ()
    """Fixed balancer base URLs to poll as well (outside the cluster, development, tests)."""
    balancer_port: str = ""
    """Port name or number on the Service's Endpoints; empty = ``ops``, else ``http``."""
    demand_interval_seconds: float = 5.0
    """Poll the balancer's demand this often."""
    demand_window_seconds: float = 60.0
    """Autoscaling acts on the mean of the polls of this many last seconds."""
    release_keep_alive_seconds: float = 300.0
    """keep_alive given to the last copy of a model scaled to zero (``minReplicas: 0``):
    the pin is released, not the copy, so Ollama unloads it this long after its last request
    (never under a running one)."""
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
            # False counts as given only for an option that defaults to True.
            off = given is False and f.default is True
            if given is not None and given != () and (given is not False or off):
                values[f.name] = given
            elif env is not None and env != "":
                values[f.name] = _convert(f.name, env)
        values["kubeconfig"] = kubeconfig_path(values.get("kubeconfig"), environ) or None
        if "home" not in values and environ.get("HOME"):
            values["home"] = environ["HOME"]
        if isinstance(values.get("registry_mirrors"), str):
            values["registry_mirrors"] = parse_mirrors(values["registry_mirrors"])
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
        counts = (self.concurrency, self.pulls_per_pod, self.reconcile_concurrency, self.attempts)
        if min(counts) < 1:
            raise ValueError(
                "concurrency, pulls per pod, reconcile concurrency and attempts must be >= 1"
            )
        if self.pin_check_seconds <= 0 or self.status_interval_seconds < 0:
            raise ValueError("pin check interval must be > 0 and status interval >= 0 seconds")
        if self.lease_seconds < 3:
            raise ValueError("the lease must last at least 3 seconds")
        if self.all_namespaces and self.namespaces:
            raise ValueError("--all-namespaces and --namespace are exclusive")
        if self.demand_interval_seconds <= 0 or self.demand_window_seconds <= 0:
            raise ValueError("demand interval and window must be > 0 seconds")
        if self.release_keep_alive_seconds <= 0:
            raise ValueError("release keep-alive must be > 0 seconds (0 would unload at once)")
        if self.balancer_service is not None:
            parts = self.balancer_service.split("/")
            if len(parts) > 2 or not all(parts):
                given = self.balancer_service
                raise ValueError(f"balancer service must be NAMESPACE/NAME or NAME, not {given!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        return self.namespaces or ("default",)

    @property
    def lease_home(self) -> str:
        """Where the Lease lives (see ``lease_namespace``)."""
        if self.lease_namespace:
            return self.lease_namespace
        if self.all_namespaces:
            return "default"
        # A namespace pattern cannot hold an object; take the first plain name.
        plain = [ns for ns in self.watched_namespaces if not set("*?[]!,") & set(ns)]
        return plain[0] if plain else "default"

    @property
    def balancer_ref(self) -> tuple[str, str] | None:
        """(namespace, name) of the balancer's Service, if set."""
        if not self.balancer_service:
            return None
        namespace, _, name = self.balancer_service.rpartition("/")
        return (namespace or self.lease_home, name)

    @property
    def own_identity(self) -> str:
        return self.identity or f"{socket.gethostname()}/{os.getpid()}"


def _convert(name: str, text: str) -> Any:
    if name in ("namespaces", "balancer_urls"):
        return tuple(n.strip() for n in text.split(",") if n.strip())
    if name in ("all_namespaces", "standalone", "manifest_lookup"):
        return _bool(text)
    if name in (
        "concurrency",
        "pulls_per_pod",
        "reconcile_concurrency",
        "attempts",
        "metrics_port",
    ):
        return int(text)
    if name.endswith("_seconds"):
        return float(text)
    return text
