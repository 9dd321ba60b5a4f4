"""The set of Ollama backends the balancer may route to, and how discovery publishes it.

Discovery (static list, DNS, Kubernetes watch) only produces :class:`Backend`
values; polling and routing consume them.  The contract is deliberately small
so each discovery mode is a thin loop around :data:`Publish`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backend", "Discovery", "Publish"]


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


#: Called by a discovery loop with the complete current backend set whenever it changes.
Publish = Callable[[Sequence[Backend]], None]


class Discovery(Protocol):
    async def run(self, publish: Publish) -> None:
        """Publish the backend set, then keep publishing changes until cancelled."""
        ...
