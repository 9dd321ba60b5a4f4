"""Balancer settings: frozen groups, one per concern, composed into one root, read once.

Each group is the settings one part of the balancer needs, and each part receives its
group (the router ``settings.routing``, the wait room ``settings.queue``, discovery
``settings.discovery``...).  The routing and queue groups are declared beside the pure
code that reads them (:class:`~.core.routing.Policy`, :class:`~.core.queueing.QueueSettings`);
the others here.  Every setting carries its documentation, unit, bounds and key
(:mod:`ollama_wire.config`), from which its ``OLLAMA_FLEET_<KEY>`` variable, its
``--key`` flag and its YAML key derive, so ``--help``, the README and the code cannot
disagree.  Precedence, lowest to highest::

    built-in default < YAML file (--config) < OLLAMA_FLEET_* environment < flags

``environ`` is always passed in (starlette-style), never read here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ollama_wire import config
from ollama_wire.backend import Backend
from ollama_wire.config import Group, Root, SettingsError, setting
from ollama_wire.hosts import parse_backends
from ollama_wire.kubesource import kubeconfig_path
from ollama_wire.logs import LogFormat

from .core.pods import PodRules
from .core.queueing import QueueSettings
from .core.routing import Policy
from .core.shared.address import parse_store_url
from .core.shared.degrade import Degrade

__all__ = [
    "ENV_PREFIX",
    "AdminMode",
    "BalancerSettings",
    "DiscoveryKind",
    "DiscoverySettings",
    "ListenSettings",
    "PollingSettings",
    "ProcessSettings",
    "ProxySettings",
    "SecuritySettings",
    "SettingsError",
    "SharedSettings",
    "UsageSettings",
    "add_arguments",
    "load_settings",
]

ENV_PREFIX = "OLLAMA_FLEET_"


class DiscoveryKind(StrEnum):
    """How backends are found."""

    STATIC = "static"
    DNS = "dns"
    KUBERNETES = "kubernetes"


class AdminMode(StrEnum):
    """What becomes of admin requests (pull, delete, create, copy, push, blobs)."""

    DENY = "deny"
    """403, pointing at ModelPool."""
    FANOUT = "fanout"
    """pull, delete, create, copy and blobs go to every pod (or the pinned one)."""


@dataclass(frozen=True, slots=True)
class ListenSettings(Group):
    """Where the balancer listens (``settings.listen``)."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 in a container)")
    port: int = setting(11434, "port to listen on (Ollama's, so clients need no change)")
    ops_port: int = setting(
        0,
        "also serve /healthz, /readyz, /metrics, /-/fleet, /-/dashboard on this port, "
        "never asking for keys (0 = off)",
    )
    reuse_port: bool = setting(
        False, "listen with SO_REUSEPORT, so several processes share the port (set for workers)"
    )
    ops_host: str = setting("", "address of the operations port (empty = host)")


@dataclass(frozen=True, slots=True)
class DiscoverySettings(Group):
    """How backends are found (``settings.discovery``): a static list, DNS or a pod watch."""

    kind: DiscoveryKind = setting(
        DiscoveryKind.STATIC, "how backends are found: static | dns | kubernetes", key="discovery"
    )
    backends: tuple[str, ...] = setting(
        (),
        "static backends: [NAME=]ADDRESS[;slots=N][;vram=24Gi], comma-separated in env/flags "
        "(a bare host means http://HOST:11434, as OLLAMA_HOST reads it)",
    )
    default_slots: int = setting(
        1, "parallel slots per loaded model on a backend (its OLLAMA_NUM_PARALLEL)", ge=1
    )
    dns_name: str = setting("", "dns discovery: headless Service name to resolve")
    dns_port: int = setting(11434, "dns discovery: Ollama port on every address")
    kube_namespaces: tuple[str, ...] = setting(
        (), "kubernetes discovery: namespaces to watch (empty = the pod's own)"
    )
    kube_selector: str = setting(
        "app.kubernetes.io/name=ollama", "kubernetes discovery: pod label selector"
    )
    kube_port: int = setting(
        11434,
        "kubernetes discovery: port when no container port is named 'http' and no "
        "ollamafleet.io/port annotation says",
    )
    kubeconfig: str = setting(
        "",
        "kubeconfig path (empty = the first of $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )

    def check(self) -> None:
        if self.kind == DiscoveryKind.STATIC:
            self.static_backends()
        if self.kind == DiscoveryKind.DNS and not self.dns_name:
            raise SettingsError("dns_name: required with discovery=dns")

    def static_backends(self) -> list[Backend]:
        """``backends`` as :class:`Backend` values (:func:`ollama_wire.hosts.parse_backends`:
        a bare host means ``http://HOST:11434``, as ``OLLAMA_HOST`` reads it)."""
        try:
            return parse_backends(self.backends, default_slots=self.default_slots)
        except ValueError as exc:
            raise SettingsError(f"backends: {exc}") from None

    def pod_rules(self) -> PodRules:
        """How a watched pod becomes a backend: its port and slots when it does not say."""
        return PodRules(default_port=self.kube_port, default_slots=self.default_slots)


@dataclass(frozen=True, slots=True)
class PollingSettings(Group):
    """How often each backend's ``/api/ps`` and ``/api/tags`` are read (``settings.polling``)."""

    interval: float = setting(
        2.0,
        "seconds between polls of /api/ps and /api/tags",
        key="poll_interval",
        unit="seconds",
        gt=0,
    )
    jitter: float = setting(
        0.2, "random extra fraction of poll_interval per poll", key="poll_jitter"
    )
    timeout: float = setting(
        2.0, "seconds allowed for one backend poll call", key="poll_timeout", unit="seconds", gt=0
    )


@dataclass(frozen=True, slots=True)
class ProxySettings(Group):
    """How a request is carried to a backend and back (``settings.proxy``)."""

    max_body_bytes: int = setting(
        128 * 1024 * 1024, "largest request body accepted (base64 images)", unit="bytes"
    )
    connect_timeout: float = setting(3.0, "seconds to connect to a backend", unit="seconds", gt=0)
    first_byte_timeout: float = setting(
        300.0,
        "seconds to wait for a backend's first byte (covers a cold load)",
        unit="seconds",
        gt=0,
    )
    idle_timeout: float = setting(
        120.0, "longest silence allowed between two streamed chunks", unit="seconds", gt=0
    )
    max_attempts: int = setting(3, "backends tried per request before giving up", ge=1)
    retry_budget: float = setting(
        30.0, "seconds after which no further backend is tried for a request", unit="seconds"
    )
    admin: AdminMode = setting(
        AdminMode.DENY,
        "admin endpoints: deny | fanout (pull, delete, create, copy and blobs to every pod; "
        "push is always refused)",
    )


@dataclass(frozen=True, slots=True)
class SecuritySettings(Group):
    """API keys and the limits on what clients may hold open (``settings.security``,
    docs/security.md)."""

    auth_file: str = setting("", "API keys YAML file (a mounted Secret); empty = no authentication")
    auth_reload_seconds: float = setting(
        5.0,
        "seconds between checks of auth_file for a change (re-read on change)",
        unit="seconds",
        gt=0,
    )
    max_connections: int = setting(
        4096, "open client connections above which requests get 503 (0 = no cap)", ge=0
    )
    client_body_timeout: float = setting(
        60.0,
        "seconds a client gets to send its whole request body (else 408)",
        unit="seconds",
        gt=0,
    )
    keepalive_timeout: float = setting(
        30.0,
        "seconds an idle connection, or one still sending its request headers, stays open",
        unit="seconds",
        gt=0,
    )
    max_header_bytes: int = setting(
        16384, "longest request line or header line accepted (else 400)", unit="bytes", ge=1024
    )
    hide_pod_names: bool = setting(
        False,
        "keep pod names off answers to clients: no X-Ollama-Backend, X-Route-Reason or "
        "X-Ollama-Kept header, 'a pod' in error texts (logs, traces and metrics keep them)",
    )


@dataclass(frozen=True, slots=True)
class SharedSettings(Group):
    """The Redis/Valkey store the replicas share (``settings.shared``; README "Shared
    state"); no URL = per-replica state, one replica only."""

    url: str = setting(
        "",
        "Redis/Valkey URL shared by all replicas: redis://[:PASSWORD@]HOST:PORT/DB, or "
        "rediss:// for TLS, or redis+sentinel://[:PASSWORD@]HOST:26379[,HOST:26379]/SERVICE[/DB] "
        "(rediss+sentinel:// for TLS) for the primary of a Sentinel service, followed through "
        "failovers; empty = each replica keeps its own counts (single replica only)",
        key="shared_state",
    )
    password_file: str = setting(
        "",
        "file holding the Redis password (a mounted Secret); not with one in the URL",
        key="shared_state_password_file",
    )
    ca_file: str = setting(
        "",
        "PEM CA bundle that signs the server's certificate (rediss:// and rediss+sentinel:// "
        "only; with Sentinel, the sentinels' too)",
        key="shared_state_ca_file",
    )
    sentinel_password_file: str = setting(
        "",
        "file holding the sentinels' own password (requirepass of the sentinels; a mounted "
        "Secret); empty = the sentinels need none (redis+sentinel:// URLs only)",
        key="shared_state_sentinel_password_file",
    )
    prefix: str = setting(
        "ollama-fleet",
        "prefix of every Redis key and channel (fleets may share one Redis)",
        key="shared_state_prefix",
    )
    timeout: float = setting(
        0.25,
        "seconds one shared operation may take before local state serves it",
        key="shared_state_timeout",
        unit="seconds",
        gt=0,
    )
    lease_ttl: float = setting(
        30.0,
        "seconds a slot lease lives unless renewed (a dead replica's slots free)",
        unit="seconds",
        gt=0,
    )
    lease_renew_interval: float = setting(
        10.0, "seconds between renewals of the leases this replica holds", unit="seconds", gt=0
    )
    degrade: Degrade = setting(
        Degrade.REMEMBER,
        "while the store is unreachable: alone (this replica's own counts only) | remember "
        "(plus the fleet as the store last showed it) | hold (remember, and a cold-load "
        "decision first waits shared_state_degraded_hold for the store to come back)",
        key="shared_state_degrade",
    )
    degraded_hold: float = setting(
        2.0,
        "with shared_state_degrade: hold, how long a cold-load decision waits for the store",
        key="shared_state_degraded_hold",
        unit="seconds",
        ge=0,
    )

    def check(self) -> None:
        if self.lease_renew_interval * 2 > self.lease_ttl:
            # Two renewals must fit in one TTL, so one slow or lost renewal loses no lease.
            raise SettingsError("lease_renew_interval: must be at most half of lease_ttl")
        if not self.url:
            return
        try:
            address = parse_store_url(self.url)
        except ValueError as exc:
            raise SettingsError(f"shared_state: {exc}") from None
        if self.ca_file and not address.tls:
            raise SettingsError(
                "shared_state_ca_file: only with a rediss:// or rediss+sentinel:// URL (TLS)"
            )
        if self.sentinel_password_file and not address.sentinel:
            raise SettingsError(
                "shared_state_sentinel_password_file: only with a redis+sentinel:// URL"
            )
        if self.password_file and address.password:
            raise SettingsError(
                "shared_state_password_file: the URL carries a password already; use one"
            )


@dataclass(frozen=True, slots=True)
class UsageSettings(Group):
    """Usage per tenant in the metrics (``settings.usage``, README "Usage per tenant").

    The tenant is the value of ``tenant_header`` (the queue's setting: one header names
    the tenant everywhere); the API key's name is a label of its own.
    """

    tenants: int = setting(
        64,
        "distinct tenant header values counted under their own name in the usage metrics "
        "(per replica); later ones count as 'other'",
        key="usage_tenants",
        ge=0,
    )


@dataclass(frozen=True, slots=True)
class ProcessSettings(Group):
    """The process: logs, shutdown and worker processes (``settings.process``)."""

    log_format: LogFormat = setting(LogFormat.AUTO, "log rendering: auto | json | console")
    log_level: str = setting(
        "info",
        "log level: debug | info | warning | error",
        choices=("debug", "info", "warning", "error"),
    )
    drain_delay: float = setting(
        0.0, "SIGTERM: seconds to keep accepting while endpoints update", unit="seconds"
    )
    drain_grace: float = setting(
        30.0, "SIGTERM: seconds in-flight requests get to finish", unit="seconds"
    )
    workers: int = setting(
        1,
        "balancer processes on the port (SO_REUSEPORT), acting as one through the shared "
        "state (shared_state, else a private redis-server/valkey-server the first process "
        "starts); 0 = the CPUs this container may use (its cgroup quota)",
        ge=0,
        invalid="{key}: must be >= 0 (0 = one per CPU the container may use)",
    )


@dataclass(frozen=True, slots=True)
class BalancerSettings(Root):
    """Every balancer setting, by concern; each part of the balancer receives its group.

    :meth:`~ollama_wire.config.Root.build` makes one from flat keys
    (``BalancerSettings.build(queue=True, poll_interval=0.1)``), :func:`load_settings`
    from the YAML file, the environment and the flags.
    """

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    listen: ListenSettings = field(default_factory=ListenSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    polling: PollingSettings = field(default_factory=PollingSettings)
    routing: Policy = field(default_factory=Policy)
    queue: QueueSettings = field(default_factory=QueueSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    shared: SharedSettings = field(default_factory=SharedSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per setting, a section per group.

    A flag that is not given leaves no attribute (``SUPPRESS``): precedence is resolved in
    :func:`load_settings`, and each help text names the real default once.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML file with any of the settings below",
    )
    config.add_arguments(parser, BalancerSettings)


def load_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    yaml_text: str | None = None,
) -> BalancerSettings:
    """Resolve settings from (lowest first) defaults, YAML, environment and flags."""
    environ = environ or {}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if yaml_text is None and config_path:
        try:
            yaml_text = Path(config_path).read_text()
        except OSError as exc:
            raise SettingsError(f"config: cannot read {config_path}: {exc}") from exc
    base = _yaml_values(yaml_text) if yaml_text else {}
    values = BalancerSettings.collect(args, environ, base)
    values["kubeconfig"] = kubeconfig_path(_text(values.get("kubeconfig")), environ)
    return BalancerSettings.build(**values)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _yaml_values(yaml_text: str) -> dict[str, object]:
    """The file's settings by key (``poll-interval`` is ``poll_interval``)."""
    try:
        doc = yaml.safe_load(yaml_text) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config: invalid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise SettingsError("config: the YAML document must be a mapping")
    known = {row.key for row in BalancerSettings.declared()}
    values: dict[str, object] = {}
    for key, raw in doc.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise SettingsError(f"config: unknown setting {key!r}")
        values[name] = (
            [_backend_text(b) for b in raw] if name == "backends" and isinstance(raw, list) else raw
        )
    return values


def _backend_text(item: Any) -> str:
    # YAML lists of backends may be mappings: {name: a, url: http://...}
    if isinstance(item, Mapping):
        url = str(item.get("url", ""))
        text = f"{item['name']}={url}" if item.get("name") else url
        for option in ("slots", "vram"):
            if item.get(option) is not None:
                text += f";{option}={item[option]}"
        return text
    return str(item)
