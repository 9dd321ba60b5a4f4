"""One Ollama server as every component names it (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Backend"]


@dataclass(frozen=True, slots=True)
class Backend:
    """One Ollama server.

    ``name`` identifies it in every header, metric and log (the pod name under
    Kubernetes discovery, ``host:port`` otherwise).  ``slots`` is the server's
    ``OLLAMA_NUM_PARALLEL`` (parallel requests per loaded model), which no
    Ollama endpoint exposes.  ``vram_bytes`` (0 = unknown) and ``node`` (the
    Kubernetes node, for spreading replicas) are optional placement hints.
    """

    name: str
    url: str
    slots: int = 1
    vram_bytes: int = 0
    node: str = ""
    labels: tuple[tuple[str, str], ...] = field(default=())
