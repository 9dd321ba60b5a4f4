"""Kubernetes access: one client configuration for kopf and for status patches.

kopf watches and posts events with its own HTTP client; status patches from
the per-pool daemon go through the official client (in a thread), because
kopf applies a daemon's patches only when the daemon exits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ollama_wire.kubeconfig import load_blocking
from ollama_wire.kubesource import KubeSource

__all__ = ["GROUP", "PEERING_GROUP", "PEERING_VERSION", "PLURAL", "VERSION", "KubeAccess"]

GROUP = "ollamafleet.io"
VERSION = "v1alpha1"
PLURAL = "modelpools"
PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


class KubeAccess:
    """A loaded client configuration plus the few calls the operator makes itself."""

    def __init__(self, kubeconfig: str | None, context: str | None, home: str = "~") -> None:
        # The kernel's rule (explicit file, else in-cluster, else ~/.kube/config), the
        # same one the balancer's discovery follows.
        source = KubeSource(
            kubeconfig=kubeconfig or "",
            context=context or "",
            fallback=os.path.join(os.path.expanduser(home), ".kube", "config"),
        )
        self.configuration, self.namespace = load_blocking(source)
        self.api = client.ApiClient(self.configuration)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def connection_info(self) -> kopf.ConnectionInfo:
        cfg = self.configuration
        header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
            "authorization"
        )
        scheme, token = None, None
        if header:
            parts = header.split(" ", 1)
            scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        api = client.CustomObjectsApi(self.api)
        await asyncio.to_thread(
            api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
        )

    def peering_exists(self, namespace: str | None, name: str) -> bool:
        """Whether kopf's peering object ``name`` exists (``namespace`` None: cluster-wide).

        False when it or its CRD is missing (404); other errors propagate.
        """
        api = client.CustomObjectsApi(self.api)
        try:
            if namespace is None:
                api.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name
                )
            else:
                api.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name
                )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
