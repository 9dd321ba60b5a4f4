"""Pods → backends, the pure part of Kubernetes discovery.

Pods are handled as the JSON the API server sends (``dict``), not as client model objects:
the watch stream is parsed directly, and tables of plain dicts are easy to test.

A pod is routable when it is ``Ready``, has an IP and is not being deleted.  A terminating
pod may still report ``Ready`` for its whole grace period; Ollama is shutting down there, so
it gets no new requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ollama_wire.backend import Backend
from ollama_wire.quantity import parse_quantity

__all__ = [
    "ANNOTATION_NUM_PARALLEL",
    "ANNOTATION_VRAM_BYTES",
    "PodKey",
    "PodRules",
    "apply_event",
    "backend_from_pod",
    "backends_from_pods",
    "parse_quantity",
    "pod_key",
]

#: Parallel requests per loaded model (Ollama's ``OLLAMA_NUM_PARALLEL``), e.g. ``"4"``.
ANNOTATION_NUM_PARALLEL = "ollamafleet.io/num-parallel"
#: GPU memory of the pod, as a Kubernetes quantity (``"24Gi"``, ``"80000000000"``).
ANNOTATION_VRAM_BYTES = "ollamafleet.io/vram-bytes"

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class PodRules:
    """How a pod is turned into a :class:`Backend`."""

    port_name: str = "http"
    """Container port name that serves the Ollama API."""
    default_port: int = 11434
    """Port used when no container declares a port named :attr:`port_name`."""
    default_slots: int = 1
    """Slots when neither the annotation nor ``OLLAMA_NUM_PARALLEL`` says (Ollama's
    own default is 1 on most GPUs, up to 4 when memory allows; say it explicitly)."""
    scheme: str = "http"


def pod_key(pod: Mapping[str, Any]) -> PodKey:
    meta = pod.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _is_ready(status: Mapping[str, Any]) -> bool:
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _positive_int(text: object) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _port_and_slots(spec: Mapping[str, Any], rules: PodRules) -> tuple[int, int | None]:
    port: int | None = None
    env_slots: int | None = None
    for container in spec.get("containers") or ():
        named = [p for p in container.get("ports") or () if p.get("name") == rules.port_name]
        if named and port is None:
            port = int(named[0]["containerPort"])
        for env in container.get("env") or ():
            if env.get("name") == "OLLAMA_NUM_PARALLEL" and "value" in env:
                value = _positive_int(env["value"])
                # The serving container's setting wins over a sidecar's.
                if value is not None and (env_slots is None or named):
                    env_slots = value
    return (port if port is not None else rules.default_port), env_slots


def backend_from_pod(pod: Mapping[str, Any], rules: PodRules) -> Backend | None:
    """The backend a pod stands for, or ``None`` if it must not receive requests.

    ``slots``: annotation :data:`ANNOTATION_NUM_PARALLEL`, else the container env
    ``OLLAMA_NUM_PARALLEL``, else ``rules.default_slots`` (invalid values fall through).
    ``vram_bytes``: annotation :data:`ANNOTATION_VRAM_BYTES` (a quantity), else 0.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or meta.get("deletionTimestamp") or not _is_ready(status):
        return None
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    port, env_slots = _port_and_slots(spec, rules)
    slots = (
        _positive_int(annotations.get(ANNOTATION_NUM_PARALLEL, ""))
        or env_slots
        or rules.default_slots
    )
    try:
        vram = parse_quantity(annotations.get(ANNOTATION_VRAM_BYTES, "0"))
    except ValueError:
        vram = 0
    host = f"[{ip}]" if ":" in ip else ip
    labels = meta.get("labels") or {}
    return Backend(
        name=str(meta.get("name") or f"{ip}:{port}"),
        url=f"{rules.scheme}://{host}:{port}",
        slots=slots,
        vram_bytes=vram,
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
