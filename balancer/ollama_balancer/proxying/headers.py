"""What crosses the proxy besides the body: the client's headers that go to the pod, and the
pod's that come back (with the balancer's own: request id, pod, route reason, queue wait).

The pod and the route reason stay off the answer when the balancer keeps pod names from
clients (``hide_pod_names``, docs/security.md): front ends pass such headers on to browsers.
"""

from __future__ import annotations

from aiohttp import web

from ..upstream import Response
from .attempt import Attempt

__all__ = ["HOP_BY_HOP", "balancer_headers", "forwarded", "response_head"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Host is rewritten (the transport sets the pod's) so a loopback-bound Ollama's
# DNS-rebinding guard accepts it; Origin is dropped because with a rewritten
# Host Ollama's same-origin shortcut no longer matches and it would answer 403.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "origin",
    "content-length",
    "accept-encoding",
    "x-ollama-backend",
    "x-session-id",
    "authorization",
    "x-api-key",
    "content-encoding",  # a zstd body was decoded by the pipeline; others are not ours to mark
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}


def forwarded(request: web.BaseRequest) -> dict[str, str]:
    """The client's headers that go upstream: one dict, built once per attempt."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
    if "Content-Type" not in request.headers:  # case-insensitive, unlike the dict
        headers["Content-Type"] = "application/json"
    return headers


def balancer_headers(at: Attempt, *, hide_pods: bool = False) -> dict[str, str]:
    """The balancer's own headers on an answer: who served it, why (not when ``hide_pods``),
    how long it waited."""
    record = at.record
    out = {"X-Request-ID": record.request_id}
    if not hide_pods:
        out["X-Ollama-Backend"] = at.backend.name
        out["X-Route-Reason"] = f"{at.choice.reason}; {at.note}" if at.note else at.choice.reason
    if record.queue_wait is not None:
        out["X-Queue-Wait"] = f"{record.queue_wait:.3f}"
    if record.queue_estimate is not None:
        out["X-Queue-Estimate"] = f"{record.queue_estimate:.3f}"
    return out


def response_head(at: Attempt, upstream: Response, *, hide_pods: bool) -> web.StreamResponse:
    """The client's response to ``upstream`` (not yet prepared): the pod's status and
    end-to-end headers, and the balancer's (without the pod's name when ``hide_pods``)."""
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    out = resp.headers
    for name, value in upstream.header_items:
        if name.lower() not in _DROP_RESPONSE:
            out.add(name, value)
    out.update(balancer_headers(at, hide_pods=hide_pods))
    length = upstream.content_length
    if length is not None and not upstream.chunked:
        resp.content_length = length
    return resp
