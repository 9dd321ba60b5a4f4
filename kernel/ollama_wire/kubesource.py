"""Which Kubernetes API server to talk to: the rule every component follows (pure).

The order is controller-runtime's: an explicit kubeconfig path, else the first file of
``$KUBECONFIG``, else the pod's service account (in-cluster), else ``~/.kube/config``.
Settings resolve the first two with :func:`kubeconfig_path` when they are read;
:mod:`ollama_wire.kubeconfig` then loads a client configuration from a :class:`KubeSource`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["KubeSource", "kubeconfig_path"]


def kubeconfig_path(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The kubeconfig file to read: ``explicit``, else the first of ``$KUBECONFIG``;
    empty when neither is given (then in-cluster, then ``~/.kube/config``)."""
    if explicit:
        return explicit
    files = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return files[0] if files else ""


@dataclass(frozen=True, slots=True)
class KubeSource:
    """Which API server and credentials to use."""

    kubeconfig: str = ""
    """A kubeconfig file (see :func:`kubeconfig_path`); empty = in-cluster, then
    :attr:`fallback`."""
    context: str = ""
    """kubeconfig context; empty = the file's current one."""
    fallback: str = ""
    """kubeconfig file used outside a pod when :attr:`kubeconfig` is empty; empty = the
    client library's default (``~/.kube/config``)."""

    @property
    def file(self) -> str | None:
        """The kubeconfig file read when not in-cluster (None: the library's default)."""
        return self.kubeconfig or self.fallback or None
