"""What resuming a request the scheduler may take back needs, kept across its attempts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..core.queueing import Waiting
from ..core.resume import Dialect, streamed
from .relay import Relay

__all__ = ["Resumable"]


@dataclass(slots=True)
class Resumable:
    """A request the scheduler may take back: what resuming it needs, across attempts."""

    waiting: Waiting
    dialect: Dialect
    doc: dict[str, Any]
    assembled: bool
    """The client asked for one JSON answer: the pod is asked for a stream, assembled here."""
    relay: Relay = field(default_factory=Relay)
    preemptions: int = 0
    resp: web.StreamResponse | None = None

    @property
    def end(self) -> bytes:
        return b"\n\n" if self.dialect.sse else b"\n"

    def first_body(self) -> bytes | None:
        """The body of the first attempt when it is not the client's (an assembled answer)."""
        return orjson.dumps(streamed(self.path, self.doc)) if self.assembled else None

    path: str = ""
