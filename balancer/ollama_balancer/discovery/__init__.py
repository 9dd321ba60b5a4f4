"""Backend discovery: a static list, DNS (headless Service) or a Kubernetes pod watch.

Each mode implements :class:`~ollama_balancer.backends.Discovery`; :func:`build` picks one
from the balancer settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..backends import Discovery
from ..core.pods import ANNOTATION_NUM_PARALLEL, ANNOTATION_VRAM_BYTES, PodRules
from .dns import DnsDiscovery, DnsDiscoveryConfig
from .kubernetes import KubernetesDiscovery, KubernetesDiscoveryConfig
from .static import StaticDiscovery

if TYPE_CHECKING:
    from ..settings import BalancerSettings

__all__ = [
    "ANNOTATION_NUM_PARALLEL",
    "ANNOTATION_VRAM_BYTES",
    "DnsDiscovery",
    "DnsDiscoveryConfig",
    "KubernetesDiscovery",
    "KubernetesDiscoveryConfig",
    "PodRules",
    "StaticDiscovery",
    "build",
]


def build(settings: BalancerSettings) -> Discovery:
    """The discovery loop that ``settings.discovery`` names."""
    if settings.discovery == "static":
        return StaticDiscovery(settings.static_backends())
    if settings.discovery == "dns":
        return DnsDiscovery(
            DnsDiscoveryConfig(
                name=settings.dns_name, port=settings.dns_port, slots=settings.default_slots
            )
        )
    if settings.discovery == "kubernetes":
        return KubernetesDiscovery(
            KubernetesDiscoveryConfig(
                namespaces=tuple(settings.kube_namespaces),
                label_selector=settings.kube_selector,
                rules=PodRules(
                    default_port=settings.kube_port, default_slots=settings.default_slots
                ),
                kubeconfig=settings.kubeconfig,
            )
        )
    raise ValueError(f"unknown discovery mode: {settings.discovery!r}")
