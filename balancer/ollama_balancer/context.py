"""What the request pipeline attaches to a request for the handlers after it."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from aiohttp import web

from .core.auth import ApiKey
from .core.record import RequestRecord
from .core.requests import ParsedRequest
from .core.shared.model import QuotaTicket
from .traces import RequestTrace

__all__ = [
    "API_KEY",
    "PARSED",
    "QUOTA",
    "RECORD",
    "REQUEST_ID",
    "TRACE",
    "QuotaHold",
    "new_request_id",
    "request_id",
]


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
#: The request's trace (:data:`~.traces.NO_TRACE` when tracing is off or the route is
#: not traced): the proxy marks its way on it.
TRACE = web.RequestKey("trace", RequestTrace)
#: The caller's API key, when keys are on (its name, priority and weight).
API_KEY = web.RequestKey("api_key", ApiKey)
#: The key's quota ticket for this request, when the route counts against quotas.
QUOTA = web.RequestKey("quota", QuotaHold)


class _Ids:
    """32 hex digits like a UUID's: 16 random per process, then a counter.

    Unique across replicas and worker processes (a forked child draws a new prefix),
    without a system call and a UUID object per request.
    """

    prefix = ""
    counter = itertools.count(1)

    @classmethod
    def reset(cls) -> None:
        cls.prefix = os.urandom(8).hex()
        cls.counter = itertools.count(1)


_Ids.reset()
os.register_at_fork(after_in_child=_Ids.reset)


def new_request_id() -> str:
    return f"{_Ids.prefix}{next(_Ids.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when printable (cut to 128 characters), else a new one."""
    known = request.get(REQUEST_ID)
    if known is not None:
        return str(known)
    sent = request.headers.get("X-Request-ID", "")
    rid = sent[:128] if sent and sent.isprintable() else new_request_id()
    request[REQUEST_ID] = rid
    return rid
