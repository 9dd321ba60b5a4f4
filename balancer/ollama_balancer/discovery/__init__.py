"""Backend discovery: a static list, DNS (headless Service) or a Kubernetes pod watch.

Each mode implements :class:`~ollama_balancer.backends.Discovery`; :func:`build` picks one
from the discovery group of the balancer settings.
"""

from __future__ import annotations

from ..backends import Discovery
from ..core.pods import ANNOTATION_NUM_PARALLEL, ANNOTATION_VRAM_BYTES, PodRules
from ..settings import DiscoveryKind, DiscoverySettings
from .dns import DnsDiscovery
from .kubernetes import KubernetesDiscovery, WatchTuning
from .static import StaticDiscovery

__all__ = [
    "ANNOTATION_NUM_PARALLEL",
    "ANNOTATION_VRAM_BYTES",
    "DnsDiscovery",
    "KubernetesDiscovery",
    "PodRules",
    "StaticDiscovery",
    "WatchTuning",
    "build",
]


def build(settings: DiscoverySettings) -> Discovery:
    """The discovery loop that ``settings.kind`` names."""
    if settings.kind == DiscoveryKind.STATIC:
        return StaticDiscovery(settings.static_backends())
    if settings.kind == DiscoveryKind.DNS:
        return DnsDiscovery(settings)
    if settings.kind == DiscoveryKind.KUBERNETES:
        return KubernetesDiscovery(settings)
    raise ValueError(f"unknown discovery mode: {settings.kind!r}")
