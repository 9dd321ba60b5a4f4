"""A Kubernetes pod → the Ollama endpoint it serves (pure).

One reading for every component: the balancer's pod discovery and the operator's
observation call :func:`pod_endpoint`, so both reach an annotated pod on the same port.
Pods are the JSON the API server sends (plain mappings; a kopf body is one too).

The port: the container port named ``http``, else the ``ollamafleet.io/port``
annotation, else Ollama's 11434.  A pod has an endpoint only when its ``Ready``
condition is true, it has an IP and it is not being deleted: a terminating pod may
report ``Ready`` for its whole grace period while Ollama shuts down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .hosts import OLLAMA_PORT, endpoint_url
from .quantity import parse_quantity

__all__ = [
    "ANNOTATION_NUM_PARALLEL",
    "ANNOTATION_PORT",
    "ANNOTATION_VRAM_BYTES",
    "PORT_NAME",
    "pod_endpoint",
    "pod_port",
    "pod_ready",
    "pod_vram_bytes",
]

#: Container port name that serves the Ollama API.
PORT_NAME = "http"
#: Ollama's port when no container port is named :data:`PORT_NAME` (e.g. ``"8000"``).
ANNOTATION_PORT = "ollamafleet.io/port"
#: Parallel requests per loaded model (Ollama's ``OLLAMA_NUM_PARALLEL``), e.g. ``"4"``.
ANNOTATION_NUM_PARALLEL = "ollamafleet.io/num-parallel"
#: GPU memory of the pod, as a Kubernetes quantity (``"24Gi"``, ``"80000000000"``).
ANNOTATION_VRAM_BYTES = "ollamafleet.io/vram-bytes"

Pod = Mapping[str, Any]


def _section(pod: Pod, name: str) -> Mapping[str, Any]:
    value = pod.get(name)
    return value if isinstance(value, Mapping) else {}


def _port_number(value: Any) -> int | None:
    try:
        port = int(str(value).strip())
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def pod_ready(pod: Pod) -> bool:
    """The pod's ``Ready`` condition is ``True``."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _section(pod, "status").get("conditions") or ()
    )


def pod_port(pod: Pod, *, port_name: str = PORT_NAME, default_port: int = OLLAMA_PORT) -> int:
    """The named container port, else the :data:`ANNOTATION_PORT` annotation, else
    ``default_port``; a malformed value falls through to the next source."""
    for container in _section(pod, "spec").get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == port_name:
                number = _port_number(port.get("containerPort"))
                if number is not None:
                    return number
    annotations = _section(pod, "metadata").get("annotations") or {}
    annotated = _port_number(annotations.get(ANNOTATION_PORT, ""))
    return annotated if annotated is not None else default_port


def pod_endpoint(
    pod: Pod,
    *,
    port_name: str = PORT_NAME,
    default_port: int = OLLAMA_PORT,
    scheme: str = "http",
) -> str | None:
    """The pod's Ollama URL, or ``None`` if it must get no requests (not Ready, no IP,
    being deleted)."""
    meta = _section(pod, "metadata")
    ip = _section(pod, "status").get("podIP")
    if not ip or meta.get("deletionTimestamp") or not pod_ready(pod):
        return None
    port = pod_port(pod, port_name=port_name, default_port=default_port)
    return endpoint_url(str(ip), port, scheme)


def pod_vram_bytes(pod: Pod) -> int | None:
    """The :data:`ANNOTATION_VRAM_BYTES` annotation, or ``None`` when absent or malformed
    (a typo in one pod's annotation must not stop discovery or a pool)."""
    annotations = _section(pod, "metadata").get("annotations") or {}
    raw = annotations.get(ANNOTATION_VRAM_BYTES)
    if raw is None:
        return None
    try:
        return parse_quantity(str(raw))
    except ValueError:
        return None
