"""The request as the wait queue sees it (late binding): tenant, class, estimated tokens,
weight — read from the API key, the request's headers and its body."""

from __future__ import annotations

from aiohttp import web

from ..context import API_KEY
from ..core.errors import BadRequest
from ..core.queueing import BadPriority, Waiting, request_priority, tenant_of
from ..core.record import RequestRecord
from ..core.requests import ParsedRequest
from ..core.tokens import TokenCorrection, estimate_tokens

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
) -> Waiting:
    """The :class:`Waiting` entry of ``request``; its tenant, class and raw token estimate
    are noted on the record (the estimate is corrected by what the tenant's answers taught)."""
    key = request.get(API_KEY)
    header = request.headers.get(tenant_header) if tenant_header else None
    tenant = tenant_of(key.name if key else None, header)
    try:
        priority = request_priority(
            key.priority if key else None, request.headers.get("X-Priority")
        )
    except BadPriority as exc:
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
    )
