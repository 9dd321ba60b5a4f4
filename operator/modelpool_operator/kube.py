"""Kubernetes access: one client configuration for kopf and for the operator's own writes.

kopf watches with its own HTTP client.  Everything the operator writes goes
through the official client, in threads: status patches and finalizers of the
pool workers, aggregated Events, and the leader-election Lease.  The Lease has
a thread of its own, so a renewal never queues behind a burst of status writes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ollama_wire.kubeconfig import load_blocking
from ollama_wire.kubesource import KubeSource
from ollama_wire.loose import loose

__all__ = ["FINALIZER", "GROUP", "PLURAL", "VERSION", "KubeAccess"]

GROUP = "ollamafleet.io"
VERSION = "v1alpha1"
PLURAL = "modelpools"
#: On ``prune: true`` pools only: their deletion waits for the prune.
FINALIZER = "ollamafleet.io/finalizer"

T = TypeVar("T")


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
        self._writes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kube-write")
        self._lease = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-lease")

    def close(self) -> None:
        self._writes.shutdown(wait=False, cancel_futures=True)
        self._lease.shutdown(wait=False, cancel_futures=True)
        loose(self.api.close)()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writes, lambda: fn(*args, **kwargs))

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
        await self._call(
            api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
        )

    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None:
        api = client.CustomObjectsApi(self.api)
        await self._call(
            api.patch_namespaced_custom_object,
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"annotations": dict(annotations)}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    async def set_finalizer(
        self, namespace: str, name: str, finalizers: list[str], present: bool
    ) -> None:
        """Add or remove :data:`FINALIZER`, given the pool's current ``finalizers``.

        A JSON patch that tests the list first, so a concurrent change of the list
        (another controller's finalizer) fails with 422 instead of being overwritten.
        """
        api = client.CustomObjectsApi(self.api)
        if present:
            if FINALIZER in finalizers:
                return
            ops: list[dict[str, Any]] = (
                [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                 {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
                if finalizers
                else [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
            )  # fmt: skip
        else:
            if FINALIZER not in finalizers:
                return
            i = finalizers.index(FINALIZER)
            ops = [
                {"op": "test", "path": f"/metadata/finalizers/{i}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{i}"},
            ]
        try:
            await self._call(
                api.patch_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name, ops,
                _content_type="application/json-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:  # gone already: nothing to hold
                raise

    # -- Events (see events.py) -------------------------------------------------------
    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._call(client.CoreV1Api(self.api).create_namespaced_event, namespace, body)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._call(client.CoreV1Api(self.api).patch_namespaced_event, name, namespace, patch)

    async def event_count(self, namespace: str, name: str) -> int:
        ev = await self._call(client.CoreV1Api(self.api).read_namespaced_event, name, namespace)
        return int(ev.count or 1)

    # -- the balancer's replicas (see demandfeed.py) --------------------------------------
    async def read_endpoints(self, namespace: str, name: str) -> dict[str, Any]:
        """The v1 Endpoints of a Service, as a dict (raises ApiException, e.g. 404)."""
        core = client.CoreV1Api(self.api)
        found = await self._call(core.read_namespaced_endpoints, name, namespace)
        out: dict[str, Any] = loose(self.api.sanitize_for_serialization)(found)
        return out

    # -- the leader-election Lease (see lease.py, leader.py) ------------------------------
    async def _lease_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lease, lambda: fn(*args))

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease as a dict, or None if it does not exist."""
        api = client.CoordinationV1Api(self.api)
        try:
            lease = await self._lease_call(api.read_namespaced_lease, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out: dict[str, Any] = loose(self.api.sanitize_for_serialization)(lease)
        return out

    async def write_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any], resource_version: str | None
    ) -> bool:
        """Create (``resource_version`` None) or replace the Lease; False if someone else
        changed or created it first (409)."""
        api = client.CoordinationV1Api(self.api)
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": dict(spec),
        }
        try:
            if resource_version is None:
                await self._lease_call(api.create_namespaced_lease, namespace, body)
            else:
                await self._lease_call(api.replace_namespaced_lease, name, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True
