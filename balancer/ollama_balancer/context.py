"""What the request pipeline attaches to a request for the handlers after it."""

from __future__ import annotations

import uuid

from aiohttp import web

from .auth import ApiKey
from .record import RequestRecord
from .requests import ParsedRequest

__all__ = ["API_KEY", "PARSED", "RECORD", "REQUEST_ID", "request_id"]

REQUEST_ID = web.RequestKey("request_id", str)
#: The one record of this request (opened by the pipeline, filled in by handlers).
RECORD = web.RequestKey("record", RequestRecord)
#: The body, parsed once, model alias resolved (on routes whose body names a model).
PARSED = web.RequestKey("parsed", ParsedRequest)
#: The caller's API key, when keys are on (its name, priority and weight).
API_KEY = web.RequestKey("api_key", ApiKey)


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when printable (cut to 128 characters), else a new one."""
    known = request.get(REQUEST_ID)
    if known is not None:
        return str(known)
    sent = request.headers.get("X-Request-ID", "")
    rid = sent[:128] if sent and sent.isprintable() else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    return rid
