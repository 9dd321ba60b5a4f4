"""One try of one request on one pod: the value every step of forwarding reads."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ollama_wire.backend import Backend

from ..core.rankers import Choice
from ..core.record import RequestRecord
from ..core.requests import ParsedRequest
from .claims import Claim

__all__ = ["Attempt"]


@dataclass(slots=True)  # not frozen: built per attempt on the hot path, never changed after
class Attempt:
    """The request (as the client sent it and as parsed), its record and its claim on a
    slot — the same for every attempt — and the ranked ``choice`` tried now, on
    ``backend``.  ``note`` is what the balancer changed in the request (for
    ``X-Route-Reason``)."""

    request: web.Request
    req: ParsedRequest
    record: RequestRecord
    claim: Claim
    choice: Choice
    backend: Backend
    note: str = ""
