"""The reverse proxy: route, forward, stream back byte for byte, fail over before the first byte.

Streams are sacred (docs/design.md §1.3): upstream bytes are written to the client
as they arrive, never parsed or re-encoded on the way (only the last chunk is
kept, to learn timings from Ollama's final metrics line).  A request is
retried on the next-ranked pod only while nothing has reached the client.
When the client goes away the upstream connection is closed at once, which
makes Ollama stop generating or abort the load it started for us.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ollama_wire.backend import Backend
from ollama_wire.client import OllamaClient, OllamaError, OllamaStatusError

from .context import API_KEY, PARSED, QUOTA, RECORD, QuotaHold
from .core.errors import AttemptFailed, BadRequest, Forbidden, for_outcome, give_up
from .core.fleetstate import FleetState
from .core.ledger import COLD_LOAD_THRESHOLD, Ledger
from .core.queueing import BadPriority, Waiting, request_priority, tenant_of
from .core.rankers import COLD_REASONS, Choice, Reason
from .core.record import RequestRecord
from .core.requests import Intent, ParsedRequest, affinity_key, with_num_ctx
from .core.routes import spec_for
from .core.routing import RouteRequest, route
from .core.shared.gate import load_decision
from .core.shared.local import LocalState
from .core.shared.model import Learned, Lease
from .core.shared.protocol import SharedState
from .core.tokens import TokenCorrection, TokenEstimate, estimate_tokens
from .core.unload import plan_unload, unload_answer
from .polling import FleetTracker
from .settings import BalancerSettings
from .upstream import AiohttpResponse, Upstream, UpstreamPool, supports
from .waitroom import WaitRoom

__all__ = ["Proxy"]

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
    "content-encoding",  # a zstd body was decoded by the pipeline; others are not ours to mark
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}

#: A body this small that is complete when its headers arrive is relayed without an
#: idle watchdog: it fits the client socket's write buffer (aiohttp's 64 KiB high water).
_AT_HAND = 64 * 1024
#: A failure faster than this is "fast": the pod is likely broken, not busy.
FAST_FAIL_SECONDS = 1.0


#: Reasons whose pod has (or is loading) the model: a slot there is worth a lease attempt.
_WARM = frozenset({Reason.RESIDENT, Reason.LOADING, Reason.AFFINITY, Reason.PINNED})


@dataclass(slots=True)
class _Claim:
    """One request's hold on the fleet: its slot lease (while it has one), what it learned,
    its quota ticket and its conversation key, all given back in one release."""

    model: str
    lease: Lease | None = None
    learned: Learned | None = None
    quota: QuotaHold | None = None
    affinity: str | None = None


class Proxy:
    def __init__(
        self,
        settings: BalancerSettings,
        view: FleetTracker,
        ledger: Ledger,
        session: Callable[[], aiohttp.ClientSession],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedState | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.ledger = ledger
        #: Leases, loads, learning, affinity and quotas: fleet-wide with a store, else local.
        self.shared: SharedState = shared or LocalState(ledger, clock=clock)
        self._session = session
        self.rng = rng or random.Random()
        self.clock = clock
        self.policy = settings.routing
        self._turn = 0  # round-robin baseline's cursor
        self._pulls: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.proxy.connect_timeout
        )
        self._num_ctx_pins = settings.routing.num_ctx_pins()
        #: Late binding (``queue``): requests wait here for a slot instead of inside Ollama.
        self.waitroom: WaitRoom | None = None
        self.tokens = TokenCorrection()
        if settings.queue.enabled:
            self.waitroom = WaitRoom(
                settings.queue,
                view,
                self.shared.occupancy,
                self.policy,
                rng=self.rng,
                clock=clock,
                hold_unavailable=settings.queue.hold_unavailable,
            )
            view.subscribe(lambda _change: self._slot_freed())
            # A slot freed here or on another replica (through the store): dispatch now.
            self.shared.on_slot_freed(lambda _freed: self._slot_freed())
        #: The hot path's own client to plain-http pods (set by the app's lifecycle);
        #: aiohttp's session serves https pods and everything else.
        self.pool: UpstreamPool | None = None

    # ------------------------------------------------------------------ entry
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """An inference request, parsed and admitted by the pipeline: route, forward, stream."""
        req = request[PARSED]
        record = request[RECORD]
        spec = spec_for(request.path)
        note = ""
        pinned_ctx = self._num_ctx_pins.get(req.key)
        if pinned_ctx is not None and req.num_ctx != pinned_ctx:
            note = f"num_ctx {req.num_ctx or 'default'}->{pinned_ctx} (pinned)"
            req = with_num_ctx(req, pinned_ctx)
        if req.intent is Intent.UNLOAD and req.pin is None:
            return await self._unload_everywhere(request, req, record)
        aff = None
        if (
            self.settings.routing.affinity
            and spec is not None
            and spec.affinity
            and req.pin is None
        ):
            aff = affinity_key(req.doc, req.key, request.headers.get("X-Session-ID"))
        aff_backend = self.shared.affinity(aff) if aff else None
        counts = spec is not None and spec.quota  # /api/show takes no slot
        route_req = RouteRequest(
            req.key,
            req.model,
            req.pin,
            aff_backend,
            num_ctx=req.num_ctx,
            load_only=req.intent is Intent.LOAD,
        )
        claim = _Claim(req.key, quota=request.get(QUOTA), affinity=aff)
        if self.waitroom is not None and counts and req.intent is Intent.INFER:
            ranked = await self._wait_for_slot(request, req, record, aff_backend, claim)
        else:
            ranked = self._route(route_req)
            if counts:
                ranked = await self._claim(route_req, ranked, record.request_id, claim)
        snapshot = self.view.snapshot
        deadline = self.clock() + self.settings.proxy.retry_budget
        failures: list[AttemptFailed] = []
        try:
            for attempt, choice in enumerate(ranked[: self.settings.proxy.max_attempts]):
                if attempt and self.clock() > deadline:
                    break
                state = snapshot.get(choice.backend)
                if state is None:
                    continue
                record.attempts += 1
                record.backend, record.reason = choice.backend, choice.reason
                try:
                    if choice.reason is Reason.PULL or (choice.backend, req.model) in self._pulls:
                        # a pull under way there is the "load" a follower joins
                        await self._pull_for(state.backend, req.model)
                    return await self._forward(
                        request, req, state.backend, choice, record, counts, note, claim
                    )
                except AttemptFailed as failed:
                    failures.append(failed)
                    record.retries.append(str(failed))
                    if not failed.retry:
                        break
            raise give_up(record.model, failures)
        finally:
            if claim.lease is not None:  # claimed, never used (no attempt reached it)
                await self._release_firmly(claim, record)

    def _fleet(self) -> FleetState:
        return FleetState.at(
            self.view.snapshot,
            self.shared.occupancy(),
            self.clock(),
            fail_threshold=self.policy.fail_threshold,
            stale_after=self.policy.stale_after,
        )

    def _route(self, req: RouteRequest) -> tuple[Choice, ...]:
        decision = route(req, self._fleet(), self.policy, self.rng, self._turn)
        self._turn += 1
        if decision.unroutable is not None:
            raise for_outcome(decision.unroutable)
        return decision.ranked

    async def _claim(
        self, req: RouteRequest, ranked: tuple[Choice, ...], rid: str, claim: _Claim
    ) -> tuple[Choice, ...]:
        """Take a slot lease before sending (early binding): the first ranked warm pod whose
        slots are not all held fleet-wide, else the first choice anyway (it queues there, as
        Ollama would, and is counted).  A cold load is decided by one replica at a time: the
        model's load lock, a fresh view, routing again, then the lease that records the load.
        """
        if ranked[0].reason in COLD_REASONS and self.shared.status().get("mode") != "local":
            async with load_decision(self.shared, req.model, rid):
                ranked = self._route(req)  # a load another replica just started is now seen
                return await self._take(ranked, rid, claim)
        return await self._take(ranked, rid, claim)

    async def _take(
        self, ranked: tuple[Choice, ...], rid: str, claim: _Claim
    ) -> tuple[Choice, ...]:
        snapshot = self.view.snapshot
        for i, choice in enumerate(ranked):
            state = snapshot.get(choice.backend)
            if state is None:
                continue
            if i and choice.reason not in _WARM:
                break  # past the warm pods: the first choice queues rather than spill
            grant = await self.shared.acquire(
                choice.backend,
                claim.model,
                slots=max(1, state.backend.slots),
                request_id=rid,
                cold=choice.reason in COLD_REASONS,
            )
            if grant.lease is not None:
                claim.lease = grant.lease
                return (choice, *(c for c in ranked if c is not choice))
        first = ranked[0]
        state = snapshot.get(first.backend)
        if state is not None:
            grant = await self.shared.acquire(
                first.backend,
                claim.model,
                slots=max(1, state.backend.slots),
                request_id=rid,
                cold=first.reason in COLD_REASONS,
                overflow=True,
            )
            claim.lease = grant.lease
        return ranked

    async def _wait_for_slot(
        self,
        request: web.Request,
        req: ParsedRequest,
        record: RequestRecord,
        aff_backend: str | None,
        claim: _Claim,
    ) -> tuple[Choice, ...]:
        """Late binding: wait in the balancer until dispatch binds the request to a pod, then
        take the slot's lease; if another replica took that slot meanwhile, wait again."""
        assert self.waitroom is not None
        waiting = self._waiting(request, req, record, aff_backend)
        while True:
            bound = await self.waitroom.wait(waiting)
            state = self.view.snapshot.get(bound.backend)
            try:
                grant = await self.shared.acquire(
                    bound.backend,
                    claim.model,
                    slots=max(1, state.backend.slots) if state else 1,
                    request_id=record.request_id,
                    cold=bound.cold,
                    # a pinned request, or one bound to a cold load, goes there regardless
                    overflow=bound.cold or req.pin is not None,
                )
            finally:
                self.waitroom.settle(bound)
            record.queue_wait = bound.waited
            if grant.lease is not None:
                claim.lease = grant.lease
                return bound.ranked
            waiting = replace(waiting, id=f"{waiting.id}+")  # lost the race: queue again

    def _waiting(
        self,
        request: web.Request,
        req: ParsedRequest,
        record: RequestRecord,
        affinity_backend: str | None,
    ) -> Waiting:
        """The request as the wait queue sees it: tenant, class, estimated tokens, weight."""
        key = request.get(API_KEY)
        header = (
            request.headers.get(self.settings.queue.tenant_header)
            if self.settings.queue.tenant_header
            else None
        )
        tenant = tenant_of(key.name if key else None, header)
        try:
            priority = request_priority(
                key.priority if key else None, request.headers.get("X-Priority")
            )
        except BadPriority as exc:
            raise BadRequest(str(exc)) from None
        raw = estimate_tokens(req.doc, request.path, self.settings.queue.default_output_tokens)
        estimate = self.tokens.correct(tenant, req.key, raw)
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

    async def _release_firmly(
        self, claim: _Claim, record: RequestRecord, answered: bool = False
    ) -> None:
        """Release even if this handler is being cancelled: a client that closes its
        connection right after the last byte cancels the handler, and a shared lease must
        still be given back (not left to expire with its TTL).  Local state releases at
        once, without suspending."""
        if isinstance(self.shared, LocalState):
            await self._release(claim, record, answered)
        else:
            await asyncio.shield(self._release(claim, record, answered))

    async def _release(self, claim: _Claim, record: RequestRecord, answered: bool = False) -> None:
        """Give the slot back with what the request taught; an answered request also settles
        its quota (tokens used) and remembers its conversation's pod — one call for all."""
        lease, claim.lease = claim.lease, None
        if lease is None:
            return
        quota, tokens = None, 0
        if answered and claim.quota is not None and not claim.quota.settled:
            quota, tokens = claim.quota.ticket, record.tokens_used()
            claim.quota.settled = True
        learned, claim.learned = claim.learned, None
        await self.shared.release(
            lease,
            learned=learned,
            affinity=claim.affinity if answered else None,
            quota=quota,
            tokens=tokens,
        )
        self._slot_freed()

    def _slot_freed(self) -> None:
        if self.waitroom is not None:
            self.waitroom.poke()

    async def _unload_everywhere(
        self, request: web.Request, req: ParsedRequest, record: RequestRecord
    ) -> web.StreamResponse:
        """An unload goes to every pod where the model is loaded or loading, answered once."""
        record.reason = Reason.UNLOAD
        plan = plan_unload(
            self._fleet(),
            req.key,
            wall=datetime.now(UTC),
            allow_pinned=self.settings.routing.allow_client_unload,
        )
        if plan.refused:
            raise Forbidden(
                f"model '{req.model}' is pinned (keep_alive forever, e.g. by a ModelPool) on "
                f"{', '.join(plan.refused)}; the balancer's allow_client_unload setting lets "
                "clients unload it"
            )
        record.backend = ",".join(plan.targets)
        if not plan.targets:
            # Loaded nowhere: what Ollama answers, without touching a pod or a load metric.
            return web.json_response(unload_answer(request.path, req.model, datetime.now(UTC)))
        headers = _forwarded(request)

        async def one(name: str) -> tuple[str, int, bytes]:
            state = self.view.snapshot.get(name)
            if state is None:
                return name, 0, b""
            try:
                async with asyncio.timeout(self.settings.proxy.first_byte_timeout):
                    async with self._session().post(
                        state.backend.url + request.path_qs,
                        data=req.body,
                        headers=headers,
                        timeout=self._client_timeout,
                    ) as upstream:
                        return name, upstream.status, await upstream.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return name, 0, _describe(exc).encode()

        results = await asyncio.gather(*(one(name) for name in plan.targets))
        record.attempts = len(results)
        for _, status, body in results:
            if status == 200:
                resp = web.Response(body=body, content_type="application/json")
                resp.headers["X-Ollama-Backend"] = record.backend
                resp.headers["X-Route-Reason"] = Reason.UNLOAD
                return resp
        failures = [
            AttemptFailed(
                name,
                f"answered {status}: {_error_message(body)}"
                if status
                else f"unreachable: {body.decode(errors='replace')}",
                status=status or None,
            )
            for name, status, body in results
        ]
        record.retries.extend(str(f) for f in failures)
        raise give_up(req.model, failures)

    # ---------------------------------------------------------------- forward
    async def _forward(
        self,
        request: web.Request,
        req: ParsedRequest,
        backend: Backend,
        choice: Choice,
        record: RequestRecord,
        counts: bool,
        note: str,
        claim: _Claim,
    ) -> web.StreamResponse:
        """Send to ``backend`` and stream back; :class:`AttemptFailed` before the first byte.

        The slot's lease is the claim's (taken before the first attempt), or one taken here
        for a failover attempt; it is released when the answer ends, fails or the client
        leaves, with what the request taught and its quota, in one call.
        """
        rid = record.request_id
        if claim.lease is not None and claim.lease.pod != backend.name:
            await self._release(claim, record)  # claimed for a choice that was skipped
        if counts and claim.lease is None:
            grant = await self.shared.acquire(
                backend.name,
                req.key,
                slots=max(1, backend.slots),
                request_id=rid,
                cold=choice.reason in COLD_REASONS,
                overflow=True,  # a failover: the request goes here now
            )
            claim.lease = grant.lease
        headers = _forwarded(request)
        answered = False
        t0 = self.clock()
        upstream: Upstream | None = None
        try:
            try:
                async with asyncio.timeout(self.settings.proxy.first_byte_timeout):
                    upstream = await self._send(request, req, backend, headers)
            except TimeoutError:
                raise AttemptFailed(
                    backend.name,
                    f"sent nothing for {self.settings.proxy.first_byte_timeout:g}s",
                    retry=False,
                    timeout=True,
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                await self._penalise(backend.name, t0)
                raise AttemptFailed(
                    backend.name, f"unreachable: {_describe(exc)}", fast=True
                ) from None
            ttfb = self.clock() - t0
            record.ttfb = ttfb
            loaded = await self.shared.first_byte(claim.lease) if claim.lease else None
            if loaded is not None:
                record.cold_load_seconds = loaded
                self._slot_freed()  # followers of the load may bind to it now
            if upstream.status >= 500 or upstream.status == 404:
                body = await _read_small(upstream, self.settings.proxy.idle_timeout)
                if upstream.status >= 500 and ttfb < FAST_FAIL_SECONDS:
                    await self._penalise(backend.name, t0)
                answer = _error_message(body)
                raise AttemptFailed(
                    backend.name,
                    f"answered {upstream.status}: {answer or upstream.reason}",
                    status=upstream.status,
                    answer=answer,
                )
            await self.shared.clear_penalty(backend.name)
            resp = await self._stream(request, upstream, backend, choice, req, record, note, claim)
            answered = True
            return resp
        finally:
            if upstream is not None:
                upstream.close()  # idempotent after a complete read; aborts a live one
            await self._release_firmly(claim, record, answered)

    async def _send(
        self, request: web.Request, req: ParsedRequest, backend: Backend, headers: dict[str, str]
    ) -> Upstream:
        if self.pool is not None and request.method == "POST" and supports(backend.url):
            return await self.pool.post(backend.url, request.path_qs, headers, req.body)
        resp = await self._session().request(
            request.method,
            backend.url + request.path_qs,
            data=req.body,
            headers=headers,
            timeout=self._client_timeout,
            allow_redirects=False,
        )
        return AiohttpResponse(resp)

    async def _stream(
        self,
        request: web.Request,
        upstream: Upstream,
        backend: Backend,
        choice: Choice,
        req: ParsedRequest,
        record: RequestRecord,
        note: str,
        claim: _Claim,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        out = resp.headers
        for name, value in upstream.header_items:
            if name.lower() not in _DROP_RESPONSE:
                out.add(name, value)
        out["X-Request-ID"] = record.request_id
        out["X-Ollama-Backend"] = backend.name
        out["X-Route-Reason"] = f"{choice.reason}; {note}" if note else choice.reason
        if record.queue_wait is not None:
            out["X-Queue-Wait"] = f"{record.queue_wait:.3f}"
        record.status = upstream.status
        length = upstream.content_length
        if length is not None and not upstream.chunked:
            resp.content_length = length
        await resp.prepare(request)
        ctype = upstream.content_type
        # The relay: per chunk one read, one write, a byte count and two references kept
        # (the final metrics line may straddle the last two reads).  Silence is watched
        # by a timer that fires a few times per idle_timeout, not re-armed per chunk.
        read = upstream.readany
        write = resp.write
        prev = last = b""
        try:
            # All of it came with the headers and fits the socket's buffer: nothing can go
            # silent, no write can wait, so no watchdog (the common small answer).
            if upstream.at_hand(_AT_HAND):
                while chunk := await read():
                    await write(chunk)
                    record.bytes_out += len(chunk)
                    prev = last
                    last = chunk
            else:
                async with asyncio.timeout(None) as deadline:
                    watchdog = _IdleWatchdog(deadline, record, self.settings.proxy.idle_timeout)
                    try:
                        while chunk := await read():
                            await write(chunk)
                            record.bytes_out += len(chunk)
                            prev = last
                            last = chunk
                    finally:
                        watchdog.stop()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if isinstance(exc, ConnectionResetError) and request.transport is None:
                record.client_gone = True
                return resp  # the client left; closing upstream (finally) stops Ollama
            record.broken_stream = True
            record.error = f"{backend.name}: stream broken: {_describe(exc)}"
            await self._end_broken(resp, ctype, last, record.error)
            return resp
        await resp.write_eof()
        record.complete = True
        claim.learned = self._learn(req.key, choice, record, prev + last, ctype)
        return resp

    async def _end_broken(
        self, resp: web.StreamResponse, ctype: str, last: bytes, message: str
    ) -> None:
        """End a stream that broke after its first byte, the way Ollama does."""
        try:
            if ctype == "application/x-ndjson":
                # Ollama's own mid-stream failure is a final {"error": ...} line (status stays
                # 200).  "done" and a done_reason end it the way front ends expect a stream to
                # end, so they show the message instead of waiting for more.
                prefix = b"" if not last or last.endswith(b"\n") else b"\n"
                end = {"error": message, "done": True, "done_reason": "error"}
                await resp.write(prefix + orjson.dumps(end) + b"\n")
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

    def _learn(
        self, key: str, choice: Choice, record: RequestRecord, tail: bytes, ctype: str
    ) -> Learned | None:
        """What this answer taught about the model's load and service times."""
        metrics = (
            _final_metrics(tail) if ctype in ("application/x-ndjson", "application/json") else None
        )
        if metrics:
            record.metrics = metrics
            if isinstance(record.token_estimate, TokenEstimate):
                self.tokens.learn(
                    record.tenant,
                    key,
                    record.token_estimate,
                    _count(metrics, "prompt_eval_count"),
                    _count(metrics, "eval_count"),
                )
            load_ns = metrics.get("load_duration") or 0
            total_ns = metrics.get("total_duration") or 0
            return Learned(
                load_seconds=load_ns / 1e9 if load_ns / 1e9 > COLD_LOAD_THRESHOLD else None,
                service_seconds=max(0.0, (total_ns - load_ns) / 1e9) if total_ns else None,
            )
        if record.cold_load_seconds is not None and record.ttfb is not None:
            return Learned(load_seconds=record.ttfb)
        if choice.reason is not Reason.COLD_LOAD:
            return Learned(service_seconds=self.clock() - record.started)
        return None

    async def _penalise(self, backend: str, since: float) -> None:
        if self.clock() - since < FAST_FAIL_SECONDS:
            await self.shared.penalise(backend, self.settings.routing.penalty_seconds)

    # ------------------------------------------------------------ auto-pull
    async def _pull_for(self, backend: Backend, model: str) -> None:
        """Pull ``model`` onto ``backend`` once, however many requests wait for it."""
        key = (backend.name, model)
        task = self._pulls.get(key)
        if task is None:
            client = OllamaClient(
                self._session(), backend.url, timeout=self.settings.proxy.connect_timeout
            )

            async def pull() -> None:
                async for _ in client.pull(model, idle_timeout=self.settings.proxy.idle_timeout):
                    pass

            task = asyncio.ensure_future(pull())
            self._pulls[key] = task
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        try:
            await asyncio.shield(task)
        except OllamaError as exc:
            status = exc.status if isinstance(exc, OllamaStatusError) else None
            raise AttemptFailed(
                backend.name, f"pull of '{model}' failed: {exc.message}", status=status
            ) from None


async def _read_small(resp: Upstream, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(min(timeout, 10.0)):
            return await resp.read(1 << 20)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return b""


def _forwarded(request: web.Request) -> dict[str, str]:
    """The client's headers that go upstream: one dict, built once per attempt."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
    if "Content-Type" not in request.headers:  # case-insensitive, unlike the dict
        headers["Content-Type"] = "application/json"
    return headers


class _IdleWatchdog:
    """Expires ``deadline`` once no byte has been relayed for ``idle`` seconds.

    It looks at the record's byte count every ``idle / 4`` seconds, so a silence is cut
    after between ``idle`` and ``1.25 × idle`` — never earlier — at the cost of four
    timer events per ``idle`` per stream instead of one timer re-armed per chunk.
    """

    __slots__ = ("_deadline", "_handle", "_idle", "_loop", "_record", "_seen", "_since")

    def __init__(self, deadline: asyncio.Timeout, record: RequestRecord, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self._record = record
        self._idle = idle
        self._seen = record.bytes_out
        self._since = self._loop.time()
        self._handle = self._loop.call_at(self._since + idle / 4, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self._record.bytes_out != self._seen:
            self._seen = self._record.bytes_out
            self._since = now
        elif now - self._since >= self._idle:
            self._deadline.reschedule(now)  # raises TimeoutError in the relay
            return
        self._handle = self._loop.call_at(now + self._idle / 4, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def _error_message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
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
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
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


def _count(metrics: dict[str, Any], key: str) -> int | None:
    value = metrics.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
