"""One request to several pods at once, one reply each: what the admin fan-out and the
unload fan-out share.

A pod that gave no answer (refused, silent past the deadline, cut off) is a reply with
status 0 and the reason in ``error``, so the caller merges answers and failures alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ollama_wire.backend import Backend

from .upstream import Sender, UpstreamError, describe
from .upstream.calls import JSON, call, error_message

__all__ = ["PodReply", "fan_out"]


@dataclass(frozen=True, slots=True)
class PodReply:
    """One pod's whole answer, or (``status`` 0) why there was none."""

    pod: str
    status: int
    body: bytes = b""
    reason: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """Why it failed: the transport's error, else the message of the pod's error body."""
        return self.error or error_message(self.body)


async def fan_out(
    transport: Sender,
    targets: Sequence[Backend],
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timeout: float,
    headers: Mapping[str, str] = JSON,
) -> list[PodReply]:
    """Send the same request to every pod of ``targets`` at once; their replies in order."""

    async def one(backend: Backend) -> PodReply:
        try:
            reply = await call(
                transport, backend.url, method, path, body, timeout=timeout, headers=headers
            )
        except UpstreamError as exc:
            return PodReply(backend.name, 0, error=describe(exc))
        return PodReply(backend.name, reply.status, reply.body, reply.reason)

    return list(await asyncio.gather(*(one(b) for b in targets)))
