"""Operator settings: frozen groups, one per concern, read once from flags and environment.

Declared with the same kit as the balancer's (:mod:`ollama_wire.config`): each setting
carries its documentation, unit and bounds, and its ``--flag`` and
``OLLAMA_FLEET_OPERATOR_<KEY>`` variable derive from its key.  Precedence: command-line
flag, then variable (an empty one counts as not set: the chart's templates may render
one empty), then the default here.  Only :func:`modelpool_operator.cli.run` builds these
from the process's sources; nothing else looks at the environment.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ollama_wire.config import Group, Root, SettingsError, setting
from ollama_wire.kubesource import kubeconfig_path
from ollama_wire.logs import LogFormat

from .sizing import parse_mirrors
from .spec import parse_quantity

__all__ = [
    "DEFAULT_LEASE",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "ActionSettings",
    "ClusterSettings",
    "DemandSettings",
    "LeaderSettings",
    "OperatorSettings",
    "ProcessSettings",
    "SizingSettings",
    "WatchSettings",
]

ENV_PREFIX = "OLLAMA_FLEET_OPERATOR_"
DEFAULT_LEASE = "ollama-fleet-operator"
LOG_LEVELS = ("debug", "info", "warning", "error")

_COUNTS = "concurrency, pulls per pod, reconcile concurrency and attempts must be >= 1"
_INTERVALS = "pin check interval must be > 0 and status interval >= 0 seconds"
_DEMAND = "demand interval and window must be > 0 seconds"


@dataclass(frozen=True, slots=True)
class WatchSettings(Group):
    """Which ModelPools are reconciled, and how often (``settings.watch``)."""

    namespaces: tuple[str, ...] = setting(
        (),
        "namespaces to watch (repeatable, or comma-separated); empty = default",
        flag="--namespace",
        short="-n",
        show="default",
    )
    all_namespaces: bool = setting(
        False,
        "watch ModelPools and pods in every namespace (needs the ClusterRole RBAC)",
        short="-A",
    )
    resync_seconds: float = setting(
        60.0,
        "reconcile every pool at least this often: Ollama evicts models silently",
        unit="seconds",
        gt=0,
        invalid="resync interval must be > 0 seconds",
    )
    pin_check_seconds: float = setting(
        2.0,
        "between resyncs, ask the pods holding a pool's pinned copies for /api/ps this "
        "often: a copy a client reloaded with other options, or unpinned, is re-pinned at once",
        unit="seconds",
        gt=0,
        invalid=_INTERVALS,
    )
    reconcile_concurrency: int = setting(
        8,
        "pools observing and planning at once (their actions then run in the pod queues)",
        ge=1,
        invalid=_COUNTS,
    )
    status_interval_seconds: float = setting(
        1.0,
        "at most one status write per pool this often while work progresses",
        unit="seconds",
        ge=0,
        invalid=_INTERVALS,
    )

    def check(self) -> None:
        if self.all_namespaces and self.namespaces:
            raise SettingsError("--all-namespaces and --namespace are exclusive")

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        return self.namespaces or ("default",)


@dataclass(frozen=True, slots=True)
class ActionSettings(Group):
    """How pulls, loads and unloads run on the pods (``settings.actions``)."""

    concurrency: int = setting(
        4,
        "pulls running at once, over all pods and pools (they share the registry's bandwidth)",
        ge=1,
        invalid=_COUNTS,
    )
    pulls_per_pod: int = setting(
        2,
        "pulls running at once on one pod (loads there are one at a time regardless)",
        ge=1,
        invalid=_COUNTS,
    )
    attempts: int = setting(
        3,
        "attempts per pull/load/unload/delete, the first included (verdicts are never retried)",
        ge=1,
        invalid=_COUNTS,
    )
    backoff_seconds: float = setting(
        1.0, "first retry delay; doubles per attempt, capped at 30 s", unit="seconds"
    )
    ollama_timeout_seconds: float = setting(
        5.0,
        "timeout of /api/tags and /api/ps; a pod slower than this is reported unreachable",
        unit="seconds",
    )
    load_timeout_seconds: float = setting(
        600.0,
        "timeout of a warm load: it may take minutes (Ollama's own stall timeout is 5 m)",
        unit="seconds",
    )
    pull_idle_timeout_seconds: float = setting(
        300.0,
        "a pull stream silent for this long is abandoned (Ollama resumes it next time)",
        unit="seconds",
    )


@dataclass(frozen=True, slots=True)
class SizingSettings(Group):
    """How the size of a model, and the VRAM of a pod, are known (``settings.sizing``)."""

    manifest_lookup: bool = setting(
        True, "learn a model's size from its registry manifest before pulling it anywhere"
    )
    registry_mirrors: tuple[tuple[str, str], ...] = setting(
        (),
        "where to ask for manifests instead of the registry host, HOST=URL comma-separated, "
        "e.g. registry.ollama.ai=http://mirror:5000",
        parse=parse_mirrors,
    )
    manifest_timeout_seconds: float = setting(
        5.0,
        "timeout of a manifest request; on timeout the size is unknown and the pull goes ahead",
        unit="seconds",
    )
    default_vram_bytes: int | None = setting(
        None,
        "VRAM of a pod with neither the annotation nor a pool default, e.g. 24Gi",
        unit="bytes",
        parse=parse_quantity,
        show="unlimited",
    )


@dataclass(frozen=True, slots=True)
class ClusterSettings(Group):
    """Which API server, with which credentials (``settings.cluster``)."""

    kubeconfig: str | None = setting(
        None,
        "kubeconfig path (else the first of $KUBECONFIG); none = in-cluster service account, "
        "else ~/.kube/config (the balancer's rule too)",
        show="$KUBECONFIG, in-cluster, ~/.kube/config",
    )
    context: str | None = setting(None, "kubeconfig context", show="the current one")
    home: str = setting("~", "home directory of the default ~/.kube/config", also_env=("HOME",))


@dataclass(frozen=True, slots=True)
class LeaderSettings(Group):
    """Leader election between the operator's replicas (``settings.leader``)."""

    standalone: bool = setting(
        False, "no leader election: act at once (one replica, tests, development)"
    )
    lease_name: str = setting(
        DEFAULT_LEASE,
        "the coordination.k8s.io Lease the replicas elect a leader with; only its holder acts",
    )
    lease_namespace: str | None = setting(
        None,
        "namespace of the Lease (the chart passes the operator's own)",
        show="the first watched namespace (default with --all-namespaces)",
    )
    lease_seconds: float = setting(
        10.0,
        "lease duration: a standby takes over this long after the leader's last renewal",
        unit="seconds",
        ge=3,
        invalid="the lease must last at least 3 seconds",
    )
    identity: str | None = setting(
        None,
        "this replica's name in the Lease and as the reportingInstance of its Events "
        "(the hostname is the pod name in Kubernetes)",
        show="hostname/pid",
    )

    @property
    def own_identity(self) -> str:
        return self.identity or f"{socket.gethostname()}/{os.getpid()}"


def _service(text: str) -> str:
    parts = text.split("/")
    if len(parts) > 2 or not all(parts):
        raise SettingsError(f"balancer service must be NAMESPACE/NAME or NAME, not {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class DemandSettings(Group):
    """Where autoscaled ModelPool models read the balancer's demand (``settings.demand``)."""

    balancer_service: str | None = setting(
        None,
        "the balancer's ops Service, NAMESPACE/NAME (or NAME in the Lease's namespace): its "
        "Endpoints are read every poll and every ready replica's /-/fleet demand is summed",
    )
    balancer_urls: tuple[str, ...] = setting(
        (),
        "fixed balancer base URLs whose /-/fleet demand is polled as well (repeatable; "
        "outside the cluster, development, tests)",
        flag="--balancer-url",
    )
    balancer_port: str = setting(
        "",
        "port name or number on the Service's Endpoints; empty = ops, else http",
    )
    demand_interval_seconds: float = setting(
        5.0, "poll the balancer's demand this often", unit="seconds", gt=0, invalid=_DEMAND
    )
    demand_window_seconds: float = setting(
        60.0,
        "autoscaling acts on the mean of the polls of this many last seconds",
        unit="seconds",
        gt=0,
        invalid=_DEMAND,
    )
    release_keep_alive_seconds: float = setting(
        300.0,
        "keep_alive given to the last copy of a model scaled to zero (minReplicas: 0): the "
        "pin is released, not the copy, so Ollama unloads it this long after its last "
        "request (never under a running one)",
        unit="seconds",
        gt=0,
        invalid="release keep-alive must be > 0 seconds (0 would unload at once)",
    )

    def check(self) -> None:
        if self.balancer_service is not None:
            _service(self.balancer_service)


@dataclass(frozen=True, slots=True)
class ProcessSettings(Group):
    """The process: health, metrics and logs (``settings.process``)."""

    liveness: str | None = setting(
        None, "kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz", show="off"
    )
    metrics_port: int = setting(
        0,
        "serve Prometheus metrics on GET /metrics of this port (0 = off)",
        ge=0,
        le=65535,
        invalid="metrics port must be 0..65535, not {value}",
    )
    metrics_host: str = setting("0.0.0.0", "address the metrics port listens on")
    log_format: LogFormat = setting(
        LogFormat.AUTO,
        "json (one object per line, kopf's records included), console, or auto (JSON unless "
        "stderr is a terminal): the balancer's rendering",
        invalid="log format must be one of auto, json, console",
    )
    log_level: str = setting(
        "info",
        "least severe level logged",
        choices=LOG_LEVELS,
        invalid=f"log level must be one of {', '.join(LOG_LEVELS)}",
    )


@dataclass(frozen=True, slots=True)
class OperatorSettings(Root):
    """Every operator setting, by concern.

    :meth:`~ollama_wire.config.Root.build` makes one from flat keys
    (``OperatorSettings.build(standalone=True, resync_seconds=1.0)``), :meth:`from_sources`
    from the flags and the environment.
    """

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
    EMPTY_ENV_IS_UNSET: ClassVar[bool] = True

    watch: WatchSettings = field(default_factory=WatchSettings)
    actions: ActionSettings = field(default_factory=ActionSettings)
    sizing: SizingSettings = field(default_factory=SizingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    demand: DemandSettings = field(default_factory=DemandSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, object], environ: Mapping[str, str]
    ) -> OperatorSettings:
        """Flags (None = not given) over ``OLLAMA_FLEET_OPERATOR_<KEY>`` over defaults."""
        values = cls.collect(flags, environ)
        explicit = values.get("kubeconfig")
        values["kubeconfig"] = (
            kubeconfig_path(explicit if isinstance(explicit, str) else None, environ) or None
        )
        return cls.build(**values)

    @property
    def lease_home(self) -> str:
        """Where the Lease lives (see ``lease_namespace``)."""
        if self.leader.lease_namespace:
            return self.leader.lease_namespace
        if self.watch.all_namespaces:
            return "default"
        # A namespace pattern cannot hold an object; take the first plain name.
        plain = [ns for ns in self.watch.watched_namespaces if not set("*?[]!,") & set(ns)]
        return plain[0] if plain else "default"

    @property
    def balancer_ref(self) -> tuple[str, str] | None:
        """(namespace, name) of the balancer's Service, if set."""
        if not self.demand.balancer_service:
            return None
        namespace, _, name = self.demand.balancer_service.rpartition("/")
        return (namespace or self.lease_home, name)
