"""Balancer settings: one typed, frozen record, read once at start-up.

Every field carries its own documentation, units and environment name, and the
command-line flags are generated from the same table, so ``--help``, the
README and the code cannot disagree.  Precedence, lowest to highest::

    built-in default < YAML file (--config) < OLLAMA_FLEET_* environment < flags

``environ`` is always passed in (starlette-style), never read here.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from ollama_wire.backend import Backend
from ollama_wire.hosts import parse_backends
from ollama_wire.kubesource import kubeconfig_path
from ollama_wire.logs import LogFormat
from ollama_wire.names import InvalidModelName, canonical

from .core.rankers import Strategy
from .core.shared.address import parse_store_url

__all__ = [
    "ENV_PREFIX",
    "AdminMode",
    "BalancerSettings",
    "DiscoveryKind",
    "SettingsError",
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


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


def _f(default: Any, doc: str, group: str = "balancer") -> Any:
    return field(default=default, metadata={"doc": doc, "group": group})


@dataclass(frozen=True)
class BalancerSettings:
    # --- listening
    host: str = _f("127.0.0.1", "address to listen on (0.0.0.0 in a container)", "listen")
    port: int = _f(11434, "port to listen on (Ollama's, so clients need no change)", "listen")
    ops_port: int = _f(
        0,
        "also serve /healthz, /readyz, /metrics, /-/fleet, /-/dashboard on this port, "
        "never asking for keys (0 = off)",
        "listen",
    )
    # --- backends
    discovery: DiscoveryKind = _f(
        DiscoveryKind.STATIC, "how backends are found: static | dns | kubernetes", "discovery"
    )
    backends: tuple[str, ...] = _f(
        (),
        "static backends: [NAME=]ADDRESS[;slots=N][;vram=24Gi], comma-separated in env/flags "
        "(a bare host means http://HOST:11434, as OLLAMA_HOST reads it)",
        "discovery",
    )
    default_slots: int = _f(
        1, "parallel slots per loaded model on a backend (its OLLAMA_NUM_PARALLEL)", "discovery"
    )
    dns_name: str = _f("", "dns discovery: headless Service name to resolve", "discovery")
    dns_port: int = _f(11434, "dns discovery: Ollama port on every address", "discovery")
    kube_namespaces: tuple[str, ...] = _f(
        (), "kubernetes discovery: namespaces to watch (empty = the pod's own)", "discovery"
    )
    kube_selector: str = _f(
        "app.kubernetes.io/name=ollama", "kubernetes discovery: pod label selector", "discovery"
    )
    kube_port: int = _f(
        11434,
        "kubernetes discovery: port when no container port is named 'http' and no "
        "ollamafleet.io/port annotation says",
        "discovery",
    )
    kubeconfig: str = _f(
        "",
        "kubeconfig path (empty = the first of $KUBECONFIG, else in-cluster, else ~/.kube/config)",
        "discovery",
    )
    # --- polling
    poll_interval: float = _f(2.0, "seconds between polls of /api/ps and /api/tags", "polling")
    poll_jitter: float = _f(0.2, "random extra fraction of poll_interval per poll", "polling")
    poll_timeout: float = _f(2.0, "seconds allowed for one backend poll call", "polling")
    fail_threshold: int = _f(
        3, "failed polls in a row before a backend leaves the routing set", "polling"
    )
    stale_after: float = _f(
        15.0, "seconds after which a backend's last good poll is no longer trusted", "polling"
    )
    # --- routing
    default_load_seconds: float = _f(
        20.0, "assumed cold-load time of a model until one is measured", "routing"
    )
    default_service_seconds: float = _f(
        5.0, "assumed request duration of a model until one is measured", "routing"
    )
    affinity: bool = _f(
        True, "send requests of one conversation/session to the same pod", "routing"
    )
    affinity_bound: float = _f(
        1.25, "affinity is ignored when its pod is loaded above this × the mean", "routing"
    )
    auto_pull: bool = _f(False, "pull a model that no pod has, instead of answering 404", "routing")
    routing_policy: Strategy = _f(
        Strategy.RESIDENCY,
        "residency | least-connections | round-robin | random (the last three are "
        "model-unaware baselines for benchmarks)",
        "routing",
    )
    penalty_seconds: float = _f(
        10.0, "cool-down for a backend that failed fast (refused, 5xx)", "routing"
    )
    pin_num_ctx: tuple[str, ...] = _f(
        (),
        "MODEL=NUM_CTX pairs, comma-separated in env/flags: every request for MODEL runs with "
        "that options.num_ctx (a client's own is rewritten), so clients cannot make Ollama "
        "reload a pinned copy with another context",
        "routing",
    )
    allow_client_unload: bool = _f(
        False,
        "let clients unload copies pinned forever (keep_alive -1, e.g. by a ModelPool); "
        "other copies are always unloadable",
        "routing",
    )
    # --- late binding (docs/queueing.md)
    queue: bool = _f(
        False,
        "late binding: hold a request in the balancer until a warm slot frees (or a cold load "
        "is the better deal) instead of queueing it inside Ollama",
        "queue",
    )
    queue_max_per_model: int = _f(
        256,
        "requests waiting per model; one more sheds the newest batch (else lowest) one",
        "queue",
    )
    queue_max_wait: float = _f(
        120.0, "seconds a request may wait in the balancer before it is answered 429", "queue"
    )
    queue_batch_aging: float = _f(
        30.0, "seconds after which a waiting batch request competes as standard", "queue"
    )
    queue_hold_unavailable: float = _f(
        0.0,
        "seconds a request waits when no pod can serve its model (none ready, scaling up from "
        "zero) before the 503 (0 = answer at once)",
        "queue",
    )
    tenant_header: str = _f(
        "",
        "request header naming the tenant when no API key does (e.g. X-OpenWebUI-User-Id); "
        "tenants share the fleet fairly while requests wait",
        "queue",
    )
    default_output_tokens: int = _f(
        256, "output tokens assumed for a request that sets no limit (fair share)", "queue"
    )
    # --- proxying
    max_body_bytes: int = _f(
        128 * 1024 * 1024, "largest request body accepted (base64 images)", "proxy"
    )
    connect_timeout: float = _f(3.0, "seconds to connect to a backend", "proxy")
    first_byte_timeout: float = _f(
        300.0, "seconds to wait for a backend's first byte (covers a cold load)", "proxy"
    )
    idle_timeout: float = _f(120.0, "longest silence allowed between two streamed chunks", "proxy")
    max_attempts: int = _f(3, "backends tried per request before giving up", "proxy")
    retry_budget: float = _f(
        30.0, "seconds after which no further backend is tried for a request", "proxy"
    )
    admin: AdminMode = _f(
        AdminMode.DENY,
        "admin endpoints: deny | fanout (pull, delete, create, copy and blobs to every pod; "
        "push is always refused)",
        "proxy",
    )
    # --- security (docs/security.md)
    auth_file: str = _f(
        "", "API keys YAML file (a mounted Secret); empty = no authentication", "security"
    )
    auth_reload_seconds: float = _f(
        5.0, "seconds between checks of auth_file for a change (re-read on change)", "security"
    )
    max_connections: int = _f(
        4096, "open client connections above which requests get 503 (0 = no cap)", "security"
    )
    client_body_timeout: float = _f(
        60.0, "seconds a client gets to send its whole request body (else 408)", "security"
    )
    keepalive_timeout: float = _f(
        30.0,
        "seconds an idle connection, or one still sending its request headers, stays open",
        "security",
    )
    max_header_bytes: int = _f(
        16384, "longest request line or header line accepted (else 400)", "security"
    )
    # --- shared state (docs: README "Shared state"); empty = per-replica, one replica only
    shared_state: str = _f(
        "",
        "Redis/Valkey URL shared by all replicas: redis://[:PASSWORD@]HOST:PORT/DB, or "
        "rediss:// for TLS; empty = each replica keeps its own counts (single replica only)",
        "shared",
    )
    shared_state_password_file: str = _f(
        "", "file holding the Redis password (a mounted Secret); not with one in the URL", "shared"
    )
    shared_state_ca_file: str = _f(
        "", "PEM CA bundle that signs the server's certificate (rediss:// only)", "shared"
    )
    shared_state_prefix: str = _f(
        "ollama-fleet",
        "prefix of every Redis key and channel (fleets may share one Redis)",
        "shared",
    )
    shared_state_timeout: float = _f(
        0.25, "seconds one shared operation may take before local state serves it", "shared"
    )
    lease_ttl: float = _f(
        30.0, "seconds a slot lease lives unless renewed (a dead replica's slots free)", "shared"
    )
    lease_renew_interval: float = _f(
        10.0, "seconds between renewals of the leases this replica holds", "shared"
    )
    # --- process
    log_format: LogFormat = _f(LogFormat.AUTO, "log rendering: auto | json | console", "process")
    log_level: str = _f("info", "log level: debug | info | warning | error", "process")
    drain_delay: float = _f(
        0.0, "SIGTERM: seconds to keep accepting while endpoints update", "process"
    )
    drain_grace: float = _f(30.0, "SIGTERM: seconds in-flight requests get to finish", "process")
    workers: int = _f(
        1,
        "balancer processes on the port (SO_REUSEPORT), acting as one through the shared "
        "state (shared_state, else a private redis-server/valkey-server the first process "
        "starts); 0 = the CPUs this container may use (its cgroup quota)",
        "process",
    )
    reuse_port: bool = _f(
        False,
        "listen with SO_REUSEPORT, so several processes share the port (set for workers)",
        "listen",
    )
    ops_host: str = _f("", "address of the operations port (empty = host)", "listen")

    def num_ctx_pins(self) -> dict[str, int]:
        """``pin_num_ctx`` as {canonical model: num_ctx}."""
        out: dict[str, int] = {}
        for item in self.pin_num_ctx:
            model, sep, value = item.rpartition("=")
            try:
                if not sep or not model.strip():
                    raise ValueError("expected MODEL=NUM_CTX")
                ctx = int(value)
                if ctx <= 0:
                    raise ValueError("num_ctx must be > 0")
                out[canonical(model.strip())] = ctx
            except (ValueError, InvalidModelName) as exc:
                raise SettingsError(f"pin_num_ctx: {item!r}: {exc}") from None
        return out

    def static_backends(self) -> list[Backend]:
        """``backends`` as :class:`Backend` values (:func:`ollama_wire.hosts.parse_backends`:
        a bare host means ``http://HOST:11434``, as ``OLLAMA_HOST`` reads it)."""
        try:
            return parse_backends(self.backends, default_slots=self.default_slots)
        except ValueError as exc:
            raise SettingsError(f"backends: {exc}") from None


#: Settings whose value is one of an enumeration's.
_ENUMS: dict[str, type[StrEnum]] = {
    "discovery": DiscoveryKind,
    "admin": AdminMode,
    "routing_policy": Strategy,
    "log_format": LogFormat,
}
_CHOICES: dict[str, tuple[str, ...]] = {
    **{name: tuple(member.value for member in kind) for name, kind in _ENUMS.items()},
    "log_level": ("debug", "info", "warning", "error"),
}


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(BalancerSettings))


def _convert(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if kind in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError("not an integer")
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in ("tuple[str, ...]",):
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if isinstance(raw, Mapping):  # YAML's {model: value} form of KEY=VALUE lists
                return tuple(f"{k}={v}" for k, v in raw.items())
            if isinstance(raw, Sequence):
                return tuple(_item_to_str(x) for x in raw)
            raise ValueError("expected a list")
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}: {exc}") from exc


def _item_to_str(item: Any) -> str:
    # YAML lists of backends may be mappings: {name: a, url: http://...}
    if isinstance(item, Mapping):
        url = str(item.get("url", ""))
        text = f"{item['name']}={url}" if item.get("name") else url
        for option in ("slots", "vram"):
            if item.get(option) is not None:
                text += f";{option}={item[option]}"
        return text
    return str(item)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare one flag per setting.

    A flag that is not given leaves no attribute (``SUPPRESS``): precedence is resolved in
    :func:`load_settings`, and each help text names the real default once.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML file with any of the settings below",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = BalancerSettings()
    for f in _fields():
        group = groups.setdefault(
            f.metadata["group"], parser.add_argument_group(f.metadata["group"])
        )
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['doc']} [env {env}; default: {shown!s}]"
        if f.type in (bool, "bool"):
            group.add_argument(
                flag,
                dest=f.name,
                default=argparse.SUPPRESS,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif f.type == "tuple[str, ...]":
            group.add_argument(
                flag,
                dest=f.name,
                default=argparse.SUPPRESS,
                action="append",
                metavar="VALUE",
                help=help_text,
            )
        else:
            group.add_argument(
                flag,
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                choices=_CHOICES.get(f.name),
                help=help_text,
            )


def load_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    yaml_text: str | None = None,
) -> BalancerSettings:
    """Resolve settings from (lowest first) defaults, YAML, environment and flags."""
    environ = environ or {}
    values: dict[str, Any] = {}
    known = {f.name: f for f in _fields()}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if yaml_text is None and config_path:
        try:
            yaml_text = Path(config_path).read_text()
        except OSError as exc:
            raise SettingsError(f"config: cannot read {config_path}: {exc}") from exc
    if yaml_text:
        try:
            doc = yaml.safe_load(yaml_text) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"config: invalid YAML: {exc}") from exc
        if not isinstance(doc, Mapping):
            raise SettingsError("config: the YAML document must be a mapping")
        for key, raw in doc.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise SettingsError(f"config: unknown setting {key!r}")
            values[name] = _convert(name, known[name].type, raw)
    for name, f in known.items():
        env = ENV_PREFIX + name.upper()
        if env in environ:
            values[name] = _convert(env, f.type, environ[env])
    if args is not None:
        for name, f in known.items():
            raw = getattr(args, name, None)
            if raw is None:
                continue
            if f.type == "tuple[str, ...]":
                raw = ",".join(raw)
            values[name] = _convert("--" + name.replace("_", "-"), f.type, raw)
    for name, allowed in _CHOICES.items():
        if name in values and values[name] not in allowed:
            raise SettingsError(f"{name}: must be one of {', '.join(allowed)}")
    for name, kind in _ENUMS.items():
        if name in values:
            values[name] = kind(values[name])
    values["kubeconfig"] = kubeconfig_path(values.get("kubeconfig"), environ)
    settings = BalancerSettings(**values)
    _validate(settings)
    return settings


def _validate(s: BalancerSettings) -> None:
    positive = (
        "poll_interval",
        "poll_timeout",
        "connect_timeout",
        "first_byte_timeout",
        "idle_timeout",
        "default_load_seconds",
        "default_service_seconds",
        "auth_reload_seconds",
        "client_body_timeout",
        "keepalive_timeout",
        "shared_state_timeout",
        "lease_ttl",
        "lease_renew_interval",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name}: must be > 0")
    if s.default_slots < 1:
        raise SettingsError("default_slots: must be >= 1")
    if s.max_attempts < 1:
        raise SettingsError("max_attempts: must be >= 1")
    if s.fail_threshold < 1:
        raise SettingsError("fail_threshold: must be >= 1")
    if s.max_connections < 0:
        raise SettingsError("max_connections: must be >= 0")
    if s.max_header_bytes < 1024:
        raise SettingsError("max_header_bytes: must be >= 1024")
    if s.queue_max_per_model < 1:
        raise SettingsError("queue_max_per_model: must be >= 1")
    if s.queue_max_wait <= 0:
        raise SettingsError("queue_max_wait: must be > 0")
    if s.queue_batch_aging < 0 or s.queue_hold_unavailable < 0:
        raise SettingsError("queue_batch_aging, queue_hold_unavailable: must be >= 0")
    if s.workers < 0:
        raise SettingsError("workers: must be >= 0 (0 = one per CPU the container may use)")
    if s.affinity_bound < 1:
        raise SettingsError("affinity_bound: must be >= 1")
    s.num_ctx_pins()
    if s.discovery == "static":
        s.static_backends()
    if s.lease_renew_interval * 2 > s.lease_ttl:
        # Two renewals must fit in one TTL, so one slow or lost renewal loses no lease.
        raise SettingsError("lease_renew_interval: must be at most half of lease_ttl")
    if s.shared_state:
        try:
            parse_store_url(s.shared_state)
        except ValueError as exc:
            raise SettingsError(f"shared_state: {exc}") from None
        if s.shared_state_ca_file and not s.shared_state.startswith("rediss://"):
            raise SettingsError("shared_state_ca_file: only with a rediss:// URL (TLS)")
        if s.shared_state_password_file and parse_store_url(s.shared_state).password:
            raise SettingsError(
                "shared_state_password_file: the URL carries a password already; use one"
            )
    if s.discovery == "dns" and not s.dns_name:
        raise SettingsError("dns_name: required with discovery=dns")
