"""What the request pipeline attaches to a request for the handlers after it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web

from .auth import ApiKey
from .record import RequestRecord
from .requests import ParsedRequest
from .shared.model import QuotaTicket

__all__ = ["API_KEY", "PARSED", "QUOTA", "RECORD", "REQUEST_ID", "QuotaHold", "request_id"]


@dataclass(slots=True)
class QuotaHold:
    """An admitted request's quota ticket; ``settled`` once its tokens were charged (the
    proxy settles it with the slot's release: one round trip for both)."""

    ticket: QuotaTicket
    settled: bool = False


REQUEST_ID = web.RequestKey("request_id", str)
#: The one record of this request (opened by the pipeline, filled in by handlers).
RECORD = web.RequestKey("record", RequestRecord)
#: The body, parsed once, model alias resolved (on routes whose body names a model).
PARSED = web.RequestKey("parsed", ParsedRequest)
#: The caller's API key, when keys are on (its name, priority and weight).
API_KEY = web.RequestKey("api_key", ApiKey)
#: The key's quota ticket for this request, when the route counts against quotas.
QUOTA = web.RequestKey("quota", QuotaHold)


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when printable (cut to 128 characters), else a new one."""
    known = request.get(REQUEST_ID)
    if known is not None:
        return str(known)
    sent = request.headers.get("X-Request-ID", "")
    rid = sent[:128] if sent and sent.isprintable() else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    return rid
