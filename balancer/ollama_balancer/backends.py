"""The set of Ollama backends the balancer may route to, and how discovery publishes it.

Discovery (static list, DNS, Kubernetes watch) only produces :class:`Backend`
values; polling and routing consume them.  The contract is deliberately small
so each discovery mode is a thin loop around :data:`Publish`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ollama_wire.backend import Backend

__all__ = ["Discovery", "Publish"]


#: Called by a discovery loop with the complete current backend set whenever it changes.
Publish = Callable[[Sequence[Backend]], None]


class Discovery(Protocol):
    async def run(self, publish: Publish) -> None:
        """Publish the backend set, then keep publishing changes until cancelled."""
        ...
