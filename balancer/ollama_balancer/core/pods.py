"""Pods → backends, the pure part of Kubernetes discovery.

Pods are handled as the JSON the API server sends (``dict``), not as client model objects:
the watch stream is parsed directly, and tables of plain dicts are easy to test.  Which
pods are routable and on which port is the kernel's :func:`ollama_wire.pods.pod_endpoint`,
the same reading the operator uses; this module adds what only routing needs (slots,
VRAM, node, labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ollama_wire.backend import Backend
from ollama_wire.hosts import OLLAMA_PORT, host_port
from ollama_wire.pods import (
    ANNOTATION_NUM_PARALLEL,
    ANNOTATION_VRAM_BYTES,
    PORT_NAME,
    pod_endpoint,
    pod_vram_bytes,
)

__all__ = [
    "ANNOTATION_NUM_PARALLEL",
    "ANNOTATION_VRAM_BYTES",
    "PodKey",
    "PodRules",
    "apply_event",
    "backend_from_pod",
    "backends_from_pods",
    "pod_key",
]

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class PodRules:
    """How a pod is turned into a :class:`Backend`."""

    port_name: str = PORT_NAME
    """Container port name that serves the Ollama API."""
    default_port: int = OLLAMA_PORT
    """Port used when no container port is named :attr:`port_name` and the pod has no
    ``ollamafleet.io/port`` annotation."""
    default_slots: int = 1
    """Slots when neither the annotation nor ``OLLAMA_NUM_PARALLEL`` says (Ollama's
    own default is 1 on most GPUs, up to 4 when memory allows; say it explicitly)."""
    scheme: str = "http"


def pod_key(pod: Mapping[str, Any]) -> PodKey:
    meta = pod.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _positive_int(text: str | int) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _env_slots(spec: Mapping[str, Any], rules: PodRules) -> int | None:
    env_slots: int | None = None
    for container in spec.get("containers") or ():
        serving = any(p.get("name") == rules.port_name for p in container.get("ports") or ())
        for env in container.get("env") or ():
            if env.get("name") == "OLLAMA_NUM_PARALLEL" and "value" in env:
                value = _positive_int(env["value"])
                # The serving container's setting wins over a sidecar's.
                if value is not None and (env_slots is None or serving):
                    env_slots = value
    return env_slots


def backend_from_pod(pod: Mapping[str, Any], rules: PodRules) -> Backend | None:
    """The backend a pod stands for, or ``None`` if it must not receive requests.

    ``slots``: annotation :data:`ANNOTATION_NUM_PARALLEL`, else the container env
    ``OLLAMA_NUM_PARALLEL``, else ``rules.default_slots`` (invalid values fall through).
    ``vram_bytes``: annotation :data:`ANNOTATION_VRAM_BYTES` (a quantity), else 0.
    """
    url = pod_endpoint(
        pod, port_name=rules.port_name, default_port=rules.default_port, scheme=rules.scheme
    )
    if url is None:
        return None
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    slots = (
        _positive_int(annotations.get(ANNOTATION_NUM_PARALLEL, ""))
        or _env_slots(spec, rules)
        or rules.default_slots
    )
    labels = meta.get("labels") or {}
    return Backend(
        name=str(meta.get("name") or host_port(url)),
        url=url,
        slots=slots,
        vram_bytes=pod_vram_bytes(pod) or 0,
        node=str(spec.get("nodeName") or ""),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )


def apply_event(
    backends: Mapping[PodKey, Backend], event_type: str, pod: Mapping[str, Any], rules: PodRules
) -> dict[PodKey, Backend]:
    """The routable set after one watch event (``ADDED``, ``MODIFIED``, ``DELETED``).

    Other event types (``BOOKMARK``, ``ERROR``) leave the set as it is.
    """
    result = dict(backends)
    if event_type not in ("ADDED", "MODIFIED", "DELETED"):
        return result
    key = pod_key(pod)
    backend = None if event_type == "DELETED" else backend_from_pod(pod, rules)
    if backend is None:
        result.pop(key, None)
    else:
        result[key] = backend
    return result


def backends_from_pods(pods: Iterable[Mapping[str, Any]], rules: PodRules) -> dict[PodKey, Backend]:
    """The routable set from a full list."""
    result: dict[PodKey, Backend] = {}
    for pod in pods:
        backend = backend_from_pod(pod, rules)
        if backend is not None:
            result[pod_key(pod)] = backend
    return result
