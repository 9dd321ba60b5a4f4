"""The operator's logs: the kernel's structured set-up (:mod:`ollama_wire.logs`), with
kopf's per-object records made readable keys.

kopf's object loggers attach ``k8s_ref`` (the object), ``k8s_skip`` (whether to post it
as an Event) and ``settings`` (the whole OperatorSettings) to every record; as JSON they
become one ``object`` key (kind, namespace, name) and the rest is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from ollama_wire.logs import LogFormat, configure_logging

__all__ = ["configure", "kopf_object"]


def kopf_object(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: kopf's record extras → an ``object`` key."""
    event.pop("settings", None)
    event.pop("k8s_skip", None)
    ref = event.pop("k8s_ref", None)
    if isinstance(ref, Mapping):
        event["object"] = {k: ref[k] for k in ("kind", "namespace", "name") if ref.get(k)}
    return event


def configure(fmt: LogFormat | str, level: str) -> None:
    """Our own logs, kopf's and the kubernetes client's through one renderer on stderr."""
    configure_logging(fmt, level, foreign=[kopf_object])
