"""A Kubernetes client configuration from a :class:`~ollama_wire.kubesource.KubeSource`.

A kubeconfig file when the source names one; else the pod's service account
(in-cluster), and outside a pod the ``fallback`` file (empty: ``~/.kube/config``).
The namespace that comes with it is the service account's, else the kubeconfig
context's, else ``default``.

The same rule fills either client flavour of the ``kubernetes`` package: the asyncio
client (:func:`load_async`, the balancer's discovery) and the blocking one
(:func:`load_blocking`, the operator's status patches and kopf's login).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.aio.client
import kubernetes.aio.config
import kubernetes.client
import kubernetes.config

from .kubesource import KubeSource
from .loose import loose

__all__ = ["SERVICE_ACCOUNT_NAMESPACE", "load_async", "load_blocking"]

#: The pod's own namespace, mounted with its service account token.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _context_namespace(source: KubeSource) -> str:
    """The namespace of the kubeconfig context in use, else ``default``."""
    # Plain YAML reading: the same in both flavours, so the blocking one serves.
    contexts, active = loose(kubernetes.config.list_kube_config_contexts)(config_file=source.file)
    chosen: Any = (
        next((c for c in contexts if c["name"] == source.context), active)
        if source.context
        else active
    )
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _service_account_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def load_async(source: KubeSource) -> tuple[kubernetes.aio.client.Configuration, str]:
    """A configuration for ``kubernetes.aio`` and the default namespace."""
    configuration = kubernetes.aio.client.Configuration()
    if not source.kubeconfig:
        try:
            loose(kubernetes.aio.config.load_incluster_config)(client_configuration=configuration)
            return configuration, _service_account_namespace()
        except kubernetes.aio.config.ConfigException:
            pass  # not in a pod: the kubeconfig file
    await loose(kubernetes.aio.config.load_kube_config)(
        config_file=source.file,
        context=source.context or None,
        client_configuration=configuration,
    )
    return configuration, _context_namespace(source)


def load_blocking(source: KubeSource) -> tuple[kubernetes.client.Configuration, str]:
    """A configuration for the blocking ``kubernetes`` client and the default namespace
    (reads files and may run a credential plugin: call it off the event loop)."""
    configuration = kubernetes.client.Configuration()
    if not source.kubeconfig:
        try:
            loose(kubernetes.config.load_incluster_config)(client_configuration=configuration)
            return configuration, _service_account_namespace()
        except kubernetes.config.ConfigException:
            pass  # not in a pod: the kubeconfig file
    loose(kubernetes.config.load_kube_config)(
        config_file=source.file,
        context=source.context or None,
        client_configuration=configuration,
    )
    return configuration, _context_namespace(source)
