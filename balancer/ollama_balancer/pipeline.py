"""The one way into the balancer: every request passes this pipeline, in this order.

::

    open the record (and its trace) ─ connection cap (503) ─ API key (401) ─ admin key (403)
        ─ body read once (408, 413) ─ parsed once, alias resolved (400)
        ─ model allowed for the key (403) ─ quota (429) ─ handler
        ─ errors rendered in the client's shape ─ the record published, once

The route table (:mod:`routes`) says what each step applies to.  Handlers read
the parsed request (:data:`PARSED`) and the record (:data:`RECORD`) from the
request; they raise :class:`~ollama_balancer.core.errors.BalancerError` and never pick
a status or an error shape themselves.  Every answer, refusals included, becomes
exactly one :class:`RequestRecord`, so every 401/403/408/413/429/503 reaches the
metrics and the log with the key's name as ``client``.  Inference and admin requests are
traced (:mod:`.traces`) when a tracer is configured: the server span opens with the record
and ends with it, and the record carries its trace id into the log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from ollama_wire.bodies import BodyError, request_body
from ollama_wire.errors import error_body_for, ollama_error_body

from .context import API_KEY, PARSED, QUOTA, RECORD, TRACE, QuotaHold, request_id
from .core.auth import ApiKey, presented_key
from .core.errors import (
    BadRequest,
    BalancerError,
    Forbidden,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from .core.record import RequestRecord
from .core.requests import InvalidRequest, ParsedRequest, parse_request, with_model
from .core.routes import Kind, RouteSpec, spec_for
from .security import SECURITY, Security
from .state import BALANCER, Balancer
from .traces import NO_TRACE, RequestTrace, start_trace

__all__ = ["error_response", "front_door"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What is traced: inference and admin requests (probes, scrapes and listings are not).
_TRACED = frozenset({Kind.INFERENCE, Kind.ADMIN})


def error_response(path: str, error: BalancerError, *, hide_pods: bool = False) -> web.Response:
    """``error`` in the shape the client of ``path`` expects: the only place that renders one
    (``hide_pods``: its message without pod names, the ``hide_pod_names`` setting)."""
    message = error.public(hide_pods)
    body = (
        ollama_error_body(message) if error.native else error_body_for(path, error.status, message)
    )
    resp = web.json_response(body, status=error.status)
    if error.retry_after is not None:
        resp.headers["Retry-After"] = str(error.retry_after)
    resp.headers.update(error.headers)
    if error.close:
        resp.force_close()
    return resp


@web.middleware
async def front_door(request: web.Request, handler: Handler) -> web.StreamResponse:
    bal = request.app[BALANCER]
    rid = request_id(request)
    spec = spec_for(request.path)
    record = RequestRecord(
        rid, request.method, request.path, kind=spec.kind if spec else "", started=bal.clock()
    )
    request[RECORD] = record
    trace = _trace(request, bal, spec)
    request[TRACE] = trace
    record.trace_id = trace.trace_id
    try:
        try:
            resp = await _admit(request, handler, bal, spec, record, trace)
        except BalancerError as exc:
            record.error = exc.message
            resp = error_response(request.path, exc, hide_pods=bal.settings.security.hide_pod_names)
        except web.HTTPNotFound:
            resp = web.Response(status=404, text="404 page not found")  # gin's, like Ollama
        except web.HTTPMethodNotAllowed:
            resp = web.Response(status=405, text="405 method not allowed")
        record.status = resp.status
    except asyncio.CancelledError:
        if not record.complete:  # a client closing after the last byte was served in full
            record.client_gone = True
            record.status = 499  # nginx's "client closed request"
        raise
    except Exception:
        record.status = record.status or 500
        raise
    finally:
        record.duration = bal.clock() - record.started
        trace.finish(record)
        bal.publish(record)
    if not resp.prepared:
        resp.headers.setdefault("X-Request-ID", rid)
    return resp


def _trace(request: web.Request, bal: Balancer, spec: RouteSpec | None) -> RequestTrace:
    """The request's server span, when tracing is on and its route is traced."""
    if bal.tracer is None or spec is None or spec.kind not in _TRACED:
        return NO_TRACE
    return start_trace(
        bal.tracer,
        request.headers,
        request.method,
        request.path,
        spec.path,
        client_address=request.remote,
        user_agent=request.headers.get("User-Agent"),
    )


async def _admit(
    request: web.Request,
    handler: Handler,
    bal: Balancer,
    spec: RouteSpec | None,
    record: RequestRecord,
    trace: RequestTrace,
) -> web.StreamResponse:
    tenant_header = bal.settings.queue.tenant_header
    if tenant_header:
        record.tenant_header = request.headers.get(tenant_header, "").strip()[:256]
    sec = request.app.get(SECURITY)
    if sec is not None:
        _connection_cap(sec)
    key = None
    if sec is not None and sec.table is not None and (spec is None or spec.needs_key):
        key = _authenticate(request, sec)
        record.client = key.name
        request[API_KEY] = key
        if spec is not None and spec.kind is Kind.ADMIN and not key.admin:
            raise Forbidden(f"key '{key.name}' may not call {request.path}")
    if spec is None or spec.kind is Kind.OPS or not _allowed(spec, request.method):
        return await handler(request)  # ops need no more; unknown routes and methods: 404/405
    if request.method in _BODY_METHODS and request.can_read_body:
        raw = await _read_body(request, bal)
        if spec.model_body:
            parsed = _parse(request, bal, raw)
            request[PARSED] = parsed
            record.model = parsed.model
            trace.model(parsed.model)
            if key is not None and not key.allows_model(parsed.model):
                raise Forbidden(f"key '{key.name}' may not use model '{parsed.model[:200]}'")
    elif spec.model_body and request.method in _BODY_METHODS:
        raise BadRequest("missing request body")
    if key is None or not spec.quota:
        return await handler(request)
    verdict = await bal.shared.admit(key, record.request_id)  # fleet-wide with shared state
    if verdict.ticket is None:
        raise TooManyRequests(
            f"key '{key.name}': {verdict.reason}", retry_after=verdict.retry_after
        )
    hold = request[QUOTA] = QuotaHold(verdict.ticket)
    try:
        return await handler(request)
    finally:
        if not hold.settled:  # shielded: even a cancelled handler gives its ticket back
            await asyncio.shield(bal.shared.finish_quota(hold.ticket, record.tokens_used()))


def _allowed(spec: RouteSpec, method: str) -> bool:
    return method in spec.methods


def _connection_cap(sec: Security) -> None:
    cap = sec.settings.max_connections
    if cap and sec.server is not None and len(sec.server.connections) > cap:
        raise Unavailable(f"too many open connections (limit {cap})", retry_after=1, close=True)


def _authenticate(request: web.Request, sec: Security) -> ApiKey:
    assert sec.table is not None
    sent = presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    key = sec.table.lookup(sent) if sent is not None else None
    if key is None:
        raise Unauthorized("missing API key" if sent is None else "invalid API key")
    return key


async def _read_body(request: web.Request, bal: Balancer) -> bytes:
    """The body, read once (aiohttp keeps it for the handler), within the size and time limits."""
    s = bal.settings
    limit = s.proxy.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        # Refuse at once instead of waiting for bytes that will be refused anyway.
        raise PayloadTooLarge(limit)
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(s.security.client_body_timeout):
                raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {s.security.client_body_timeout:g}s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(limit) from None
    try:
        # zstd on the /v1 inference paths, decoded once within Ollama's 20 MiB.
        return request_body(request.path, request.headers.get("Content-Encoding"), raw)
    except BodyError as exc:
        raise BadRequest(exc.message, native=True) from None


def _parse(request: web.Request, bal: Balancer, raw: bytes) -> ParsedRequest:
    try:
        req = parse_request(raw, request.path, request.headers.get("X-Ollama-Backend"))
    except InvalidRequest as exc:
        raise BadRequest(exc.message) from None
    return _resolve_alias(bal, req)


def _resolve_alias(bal: Balancer, req: ParsedRequest) -> ParsedRequest:
    """``ollama/llama3`` means ``llama3`` unless a namespace ``ollama`` really exists."""
    if req.alt_key is None or req.alt_model is None:
        return req
    for s in bal.view.snapshot.backends:
        if s.has_installed(req.key) or s.resident_model(req.key):
            return req
    return with_model(req, req.alt_model, req.alt_key)
