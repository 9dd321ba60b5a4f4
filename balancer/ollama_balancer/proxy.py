"""The reverse proxy: route, forward, stream back byte for byte, fail over before the first byte.

Streams are sacred (DESIGN.md §2): upstream bytes are written to the client
as they arrive, never parsed or re-encoded on the way (only the last chunk is
kept, to learn timings from Ollama's final metrics line).  A request is
retried on the next-ranked pod only while nothing has reached the client.
When the client goes away the upstream connection is closed at once, which
makes Ollama stop generating or abort the load it started for us.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ollama_wire.backend import Backend
from ollama_wire.client import OllamaClient, OllamaError
from ollama_wire.errors import error_body_for

from .ledger import COLD_LOAD_THRESHOLD, Ledger
from .polling import FleetView
from .requests import BadRequest, ParsedRequest, affinity_key, parse_request, with_model
from .routing import COLD_LOAD, PULL, Choice, Policy, RouteRequest, route
from .settings import BalancerSettings

__all__ = ["Proxy", "RequestRecord", "error_response"]

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
# Host is rewritten (aiohttp sets the backend's) so a loopback-bound Ollama's
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
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}

#: A failure faster than this is "fast": the pod is likely broken, not busy.
FAST_FAIL_SECONDS = 1.0
AFFINITY_ENTRIES = 10_000
_AFFINITY_PATHS = frozenset(
    {"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/responses"}
)


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    resp = web.json_response(error_body_for(path, status, message), status=status)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    if headers:
        resp.headers.update(headers)
    return resp


@dataclass(slots=True)
class RequestRecord:
    """One finished proxied request: what logs and metrics are made of."""

    request_id: str
    method: str
    path: str
    model: str = ""
    backend: str = ""
    reason: str = ""
    status: int = 0
    attempts: int = 0
    bytes_out: int = 0
    started: float = 0.0
    duration: float = 0.0
    ttfb: float | None = None
    cold_load_seconds: float | None = None
    broken_stream: bool = False
    client_gone: bool = False
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    retries: list[str] = field(default_factory=list)
    client: str = ""  # the API key's name when authentication is on (never the key)


@dataclass(slots=True)
class _Failure:
    status: int
    message: str
    retry: bool
    fast: bool = False
    body: bytes = b""
    content_type: str = ""


class Proxy:
    def __init__(
        self,
        settings: BalancerSettings,
        view: FleetView,
        ledger: Ledger,
        session: Callable[[], aiohttp.ClientSession],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.ledger = ledger
        self._session = session
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_record = on_record
        self.policy = Policy(
            fail_threshold=settings.fail_threshold,
            stale_after=settings.stale_after,
            affinity_bound=settings.affinity_bound,
            auto_pull=settings.auto_pull,
            strategy=settings.routing_policy,
        )
        self._turn = 0  # round-robin baseline's cursor
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self._pulls: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout
        )

    # ------------------------------------------------------------------ entry
    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        record = RequestRecord(rid, request.method, request.path, started=self.clock())
        record.client = request.get(CLIENT_NAME, "")
        try:
            resp = await self._handle(request, record)
            record.status = resp.status
        except asyncio.CancelledError:
            record.client_gone = True
            record.status = 499
            raise
        finally:
            record.duration = self.clock() - record.started
            if self.on_record is not None:
                self.on_record(record)
        return resp

    async def _handle(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        path = request.path
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                path,
                413,
                f"request body too large: the limit is {self.settings.max_body_bytes} bytes",
            )
        try:
            req = parse_request(raw, path, request.headers.get("X-Ollama-Backend"))
        except BadRequest as exc:
            record.error = exc.message
            return error_response(path, exc.status, exc.message)
        snapshot = self.view.snapshot
        req = self._resolve_alias(req)
        record.model = req.model
        aff = None
        if self.settings.affinity and path in _AFFINITY_PATHS and req.pin is None:
            aff = affinity_key(req.doc, req.key, request.headers.get("X-Session-ID"))
        decision = route(
            RouteRequest(req.key, req.model, req.pin, self._affinity.get(aff) if aff else None),
            snapshot,
            self.ledger,
            self.policy,
            self.clock(),
            self.rng,
            self._turn,
        )
        self._turn += 1
        if decision.error is not None:
            record.error = decision.error.message
            return error_response(
                path,
                decision.error.status,
                decision.error.message,
                retry_after=decision.error.retry_after,
            )
        counts = path != "/api/show"
        deadline = self.clock() + self.settings.retry_budget
        failure: _Failure | None = None
        for attempt, choice in enumerate(decision.ranked[: self.settings.max_attempts]):
            if attempt and self.clock() > deadline:
                break
            state = snapshot.get(choice.backend)
            if state is None:
                continue
            record.attempts += 1
            record.backend, record.reason = choice.backend, choice.reason
            if choice.reason == PULL:
                failure = await self._pull_for(state.backend, req.model)
                if failure is not None:
                    record.retries.append(f"{choice.backend}: {failure.message}")
                    continue
            result = await self._forward(request, req, state.backend, choice, record, counts)
            if isinstance(result, web.StreamResponse):
                if aff is not None:
                    self._remember(aff, choice.backend)
                return result
            failure = result
            record.retries.append(f"{choice.backend}: {result.message}")
            if not result.retry:
                break
        return self._give_up(path, failure, record)

    def _resolve_alias(self, req: ParsedRequest) -> ParsedRequest:
        """``ollama/llama3`` means ``llama3`` unless a namespace ``ollama`` really exists."""
        if req.alt_key is None or req.alt_model is None:
            return req
        snap = self.view.snapshot
        if any(s.has_installed(req.key) or s.resident_model(req.key) for s in snap.backends):
            return req
        return with_model(req, req.alt_model, req.alt_key)

    def _remember(self, key: str, backend: str) -> None:
        self._affinity[key] = backend
        self._affinity.move_to_end(key)
        while len(self._affinity) > AFFINITY_ENTRIES:
            self._affinity.popitem(last=False)

    def _give_up(
        self, path: str, failure: _Failure | None, record: RecordType
    ) -> web.StreamResponse:
        if failure is None:
            record.error = "no backend could be tried"
            return error_response(path, 503, "no Ollama backend is available", retry_after=5)
        record.error = failure.message
        if failure.body and failure.status < 600 and failure.status != 503:
            # The backend's own answer (e.g. a 500 load failure), reshaped for /v1 clients.
            message = _error_message(failure.body) or failure.message
            return error_response(path, failure.status, message)
        tried = "; ".join(record.retries)
        status = failure.status if failure.status in (503, 504) else 503
        return error_response(
            path,
            status,
            f"all backends failed for model '{record.model}': {tried}",
            retry_after=5,
        )

    # ---------------------------------------------------------------- forward
    async def _forward(
        self,
        request: web.Request,
        req: ParsedRequest,
        backend: Backend,
        choice: Choice,
        record: RequestRecord,
        counts: bool,
    ) -> web.StreamResponse | _Failure:
        cold = choice.reason in (COLD_LOAD, PULL)
        rid = record.request_id
        if counts:
            self.ledger.begin(backend.name, req.key, cold=cold, now=self.clock(), request_id=rid)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        t0 = self.clock()
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(self.settings.first_byte_timeout):
                    upstream = await self._session().request(
                        request.method,
                        backend.url + request.path_qs,
                        data=req.body,
                        headers=headers,
                        timeout=self._client_timeout,
                        allow_redirects=False,
                    )
            except TimeoutError:
                return _Failure(
                    504,
                    f"{backend.name} sent nothing for {self.settings.first_byte_timeout:g}s",
                    retry=False,
                )
            except (aiohttp.ClientError, OSError) as exc:
                self._penalise(backend.name, t0)
                return _Failure(
                    503, f"{backend.name} unreachable: {_describe(exc)}", retry=True, fast=True
                )
            ttfb = self.clock() - t0
            record.ttfb = ttfb
            loaded = (
                self.ledger.first_byte(backend.name, req.key, now=self.clock(), request_id=rid)
                if counts
                else None
            )
            if loaded is not None:
                record.cold_load_seconds = loaded
            if upstream.status >= 500 or upstream.status == 404:
                body = await _read_small(upstream, self.settings.idle_timeout)
                if upstream.status >= 500 and ttfb < FAST_FAIL_SECONDS:
                    self._penalise(backend.name, t0)
                return _Failure(
                    upstream.status,
                    f"{backend.name} answered {upstream.status}: "
                    f"{_error_message(body) or upstream.reason}",
                    retry=True,
                    body=body,
                    content_type=upstream.content_type,
                )
            self.ledger.clear_penalty(backend.name)
            return await self._stream(request, upstream, backend, choice, req, record)
        finally:
            if upstream is not None:
                upstream.close()  # idempotent after a complete read; aborts a live one
            if counts:
                self.ledger.end(backend.name, req.key, request_id=rid)

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        backend: Backend,
        choice: Choice,
        req: ParsedRequest,
        record: RequestRecord,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _DROP_RESPONSE:
                resp.headers.add(name, value)
        resp.headers["X-Request-ID"] = record.request_id
        resp.headers["X-Ollama-Backend"] = backend.name
        resp.headers["X-Route-Reason"] = choice.reason
        chunked = "chunked" in upstream.headers.get("Transfer-Encoding", "").lower()
        if upstream.content_length is not None and not chunked:
            resp.content_length = upstream.content_length
        await resp.prepare(request)
        ctype = upstream.content_type
        loop = asyncio.get_running_loop()
        idle = self.settings.idle_timeout
        prev = last = b""
        try:
            async with asyncio.timeout(idle) as deadline:
                while chunk := await upstream.content.readany():
                    await resp.write(chunk)
                    record.bytes_out += len(chunk)
                    prev, last = last, chunk
                    deadline.reschedule(loop.time() + idle)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if isinstance(exc, ConnectionResetError) and request.transport is None:
                record.client_gone = True
                return resp  # the client left; closing upstream (finally) stops Ollama
            record.broken_stream = True
            record.error = f"{backend.name}: stream broken: {_describe(exc)}"
            await self._end_broken(resp, ctype, last, record.error)
            return resp
        await resp.write_eof()
        self._learn(req.key, choice, record, prev + last, ctype)
        return resp

    async def _end_broken(
        self, resp: web.StreamResponse, ctype: str, last: bytes, message: str
    ) -> None:
        """End a stream that broke after its first byte, the way Ollama does."""
        try:
            if ctype == "application/x-ndjson":
                # Ollama's own mid-stream failure: a final {"error": ...} line (status stays 200).
                prefix = b"" if not last or last.endswith(b"\n") else b"\n"
                await resp.write(prefix + json.dumps({"error": message}).encode() + b"\n")
                await resp.write_eof()
            elif ctype == "text/event-stream":
                await resp.write_eof()  # no [DONE]: OpenAI clients see an incomplete stream
            else:
                # A fixed-length JSON body cannot be completed: abort the connection so
                # the client sees a truncated response instead of a silently short one.
                if resp.task is not None:
                    resp.force_close()
                raise ConnectionAbortedError(message)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass

    def _learn(self, key: str, choice: Choice, record: RecordType, tail: bytes, ctype: str) -> None:
        metrics = (
            _final_metrics(tail) if ctype in ("application/x-ndjson", "application/json") else None
        )
        if metrics:
            record.metrics = metrics
            load_ns = metrics.get("load_duration") or 0
            total_ns = metrics.get("total_duration") or 0
            if load_ns / 1e9 > COLD_LOAD_THRESHOLD:
                self.ledger.learn_load(key, load_ns / 1e9)
            if total_ns:
                self.ledger.learn_service(key, max(0.0, (total_ns - load_ns) / 1e9))
            return
        if record.cold_load_seconds is not None and record.ttfb is not None:
            self.ledger.learn_load(key, record.ttfb)
        elif choice.reason != COLD_LOAD:
            self.ledger.learn_service(key, self.clock() - record.started)

    def _penalise(self, backend: str, since: float) -> None:
        if self.clock() - since < FAST_FAIL_SECONDS:
            self.ledger.penalise(backend, self.clock() + self.settings.penalty_seconds)

    # ------------------------------------------------------------ auto-pull
    async def _pull_for(self, backend: Backend, model: str) -> _Failure | None:
        """Pull ``model`` onto ``backend`` once, however many requests wait for it."""
        key = (backend.name, model)
        task = self._pulls.get(key)
        if task is None:
            client = OllamaClient(
                self._session(), backend.url, timeout=self.settings.connect_timeout
            )

            async def pull() -> None:
                async for _ in client.pull(model, idle_timeout=self.settings.idle_timeout):
                    pass

            task = asyncio.ensure_future(pull())
            self._pulls[key] = task
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        try:
            await asyncio.shield(task)
        except OllamaError as exc:
            return _Failure(
                exc.status or 503, f"pull of '{model}' failed: {exc.message}", retry=True
            )
        return None


RecordType = RequestRecord
REQUEST_ID = web.RequestKey("request_id", str)
#: Set by the authentication middleware (limits.py) to the key's name.
CLIENT_NAME = web.RequestKey("client_name", str)


def request_id(request: web.Request) -> str:
    known = request.get(REQUEST_ID)
    if known is not None:
        return str(known)
    sent = request.headers.get("X-Request-ID", "")
    rid = sent[:128] if sent and sent.isprintable() else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    return rid


async def _read_small(resp: aiohttp.ClientResponse, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(min(timeout, 10.0)):
            return await resp.content.read(1 << 20)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return b""


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return ""


def _final_metrics(tail: bytes) -> dict[str, Any] | None:
    line = tail.rstrip(b"\n").rpartition(b"\n")[2]
    if b'"done"' not in line:
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not doc.get("done"):
        return None
    keys = (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
        "done_reason",
    )
    return {k: doc[k] for k in keys if k in doc}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
