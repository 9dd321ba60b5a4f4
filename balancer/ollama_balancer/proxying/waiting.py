"""The request as the wait queue sees it (late binding): tenant, class, estimated tokens and
slot-seconds, weight, deadline, whether it can be resumed — read from the API key, the
request's headers and its body."""

from __future__ import annotations

from aiohttp import web

from ..context import API_KEY
from ..core.errors import BadRequest
from ..core.queueing import (
    DEADLINE_HEADER,
    BadDeadline,
    BadPriority,
    Waiting,
    parse_deadline,
    request_priority,
    tenant_of,
)
from ..core.record import RequestRecord
from ..core.requests import ParsedRequest
from ..core.resume import resumable
from ..core.tokens import RateBook, TokenCorrection, estimate_tokens

__all__ = ["waiting_for"]


def waiting_for(
    request: web.Request,
    req: ParsedRequest,
    record: RequestRecord,
    affinity_backend: str | None,
    *,
    tenant_header: str,
    default_output_tokens: int,
    tokens: TokenCorrection,
    rates: RateBook | None = None,
    now: float = 0.0,
) -> Waiting:
    """The :class:`Waiting` entry of ``request``; its tenant, class and raw token estimate
    are noted on the record (the estimate is corrected by what the tenant's answers taught).
    A malformed ``X-Priority`` or ``X-Request-Deadline`` is a 400 in the client's shape."""
    key = request.get(API_KEY)
    header = request.headers.get(tenant_header) if tenant_header else None
    tenant = tenant_of(key.name if key else None, header)
    try:
        priority = request_priority(
            key.priority if key else None, request.headers.get("X-Priority")
        )
        finish_by = parse_deadline(request.headers.get(DEADLINE_HEADER), now)
    except (BadPriority, BadDeadline) as exc:
        raise BadRequest(str(exc)) from None
    raw = estimate_tokens(req.doc, request.path, default_output_tokens)
    estimate = tokens.correct(tenant, req.key, raw)
    record.tenant, record.priority = tenant, priority
    record.token_estimate = raw
    return Waiting(
        id=record.request_id,
        model=req.key,
        tenant=tenant,
        priority=priority,
        tokens=max(1, estimate.total),
        weight=key.weight if key else 1.0,
        display=req.model,
        pin=req.pin,
        affinity_backend=affinity_backend,
        num_ctx=req.num_ctx,
        expected_seconds=rates.seconds(req.key, estimate) if rates is not None else 1.0,
        rates_learned=rates is not None and rates.knows(req.key),
        estimate=estimate,
        finish_by=finish_by,
        resumable=rates is not None and bool(resumable(request.path, req.doc)),
        max_wait=key.max_wait if key else None,
    )
