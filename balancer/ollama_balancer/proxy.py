"""The reverse proxy: an inference request's way through the fleet, in this order.

::

    num_ctx pinned ─ an unload fans out (Unloader) ─ conversation affinity
        ─ a slot claimed: early (route, lease) or late (the wait room binds it)
        ─ attempts in ranked order, each: auto-pull ─ lease there ─ send
              ─ first byte (504 if none in time; 5xx/404 fail over) ─ relay
        ─ a complete answer teaches (Lessons) ─ the slot given back, once
        ─ every attempt failed: one error from all of them

Streams are sacred: the relay (:mod:`.proxying.relay`) writes upstream
bytes to the client as they arrive.  A request is retried on the next-ranked pod only
while nothing has reached the client.  When the client goes away the upstream connection
is closed at once, which makes Ollama stop generating or abort the load it started for us.

The parts, each with one job, live in :mod:`.proxying`; this module only runs them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from aiohttp import web

from .context import PARSED, QUOTA, RECORD, TRACE
from .core.errors import ANY_POD, AttemptFailed, give_up
from .core.ledger import Ledger
from .core.rankers import Choice, Reason, Strategy
from .core.record import RequestRecord
from .core.requests import Intent, ParsedRequest, affinity_key, session_header, with_num_ctx
from .core.routes import spec_for
from .core.routing import RouteRequest
from .core.shared.local import LocalState
from .core.shared.protocol import SharedState
from .core.tokens import estimate_tokens
from .core.usage import usage_of
from .polling import FleetTracker
from .proxying.attempt import Attempt
from .proxying.autopull import AutoPull
from .proxying.claims import Claim, SlotClaims
from .proxying.headers import forwarded, response_head
from .proxying.lessons import Lessons
from .proxying.relay import Ending, Relay, end_broken
from .proxying.resumer import Resumer
from .proxying.router import Router
from .proxying.waiting import waiting_for
from .settings import BalancerSettings
from .unloader import Unloader
from .upstream import Response, Sender, UpstreamError, describe
from .upstream.calls import LIMIT, error_message
from .waitroom import WaitRoom
from .witness import Witness

__all__ = ["FAST_FAIL_SECONDS", "Proxy"]

#: A failure faster than this is "fast": the pod is likely broken, not busy.
FAST_FAIL_SECONDS = 1.0
#: The longest wait for the rest of an error answer that will not be relayed.
_ERROR_BODY_SECONDS = 10.0


class Proxy:
    """Runs the parts of :mod:`.proxying` for each inference request."""

    def __init__(
        self,
        settings: BalancerSettings,
        view: FleetTracker,
        ledger: Ledger,
        transport: Sender,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedState | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        #: Leases, loads, learning, affinity and quotas: fleet-wide with a store, else local.
        self.shared: SharedState = shared or LocalState(ledger, clock=clock)
        self.transport = transport
        self.clock = clock
        rng = rng or random.Random()
        self.route = Router(view, self.shared.occupancy, settings.routing, rng=rng, clock=clock)
        #: Late binding (``queue``): requests wait here for a slot instead of inside Ollama.
        self.waitroom: WaitRoom | None = None
        self.lessons = Lessons(clock)
        # The model-unaware baselines (least-connections, ...) bind early: late binding waits
        # for a warm slot, and they know of none.
        if settings.queue.enabled and settings.routing.strategy is Strategy.RESIDENCY:
            self.waitroom = WaitRoom(
                settings.queue,
                view,
                self.shared.occupancy,
                settings.routing,
                rng=rng,
                clock=clock,
                hold_unavailable=settings.queue.hold_unavailable,
                shared=self.shared,
                replica=str(self.shared.status().get("replica") or "local"),
                rates=self.lessons.rates,
            )
        self.claims = SlotClaims(self.shared, view, self.route, self.waitroom, clock=clock)
        #: What the proxy caused or saw, counted in the fleet view at once.
        self.witness = Witness(view, self.shared, clock)
        #: Relays the scheduler may take back, and their resumes (``queue_policy=reclaim``).
        self.resumer: Resumer | None = None
        if self.claims.scheduling:
            self.resumer = Resumer(
                self.claims,
                transport,
                idle_timeout=settings.proxy.idle_timeout,
                first_byte_timeout=settings.proxy.first_byte_timeout,
                max_attempts=settings.proxy.max_attempts,
                rates=self.lessons.rates,
                clock=clock,
                witness=self.witness,
                hide_pods=settings.security.hide_pod_names,
            )
        self.pulls = AutoPull(
            transport, idle_timeout=settings.proxy.idle_timeout, witness=self.witness
        )
        self.unloader = Unloader(
            self.route.fleet,
            transport,
            allow_pinned=settings.routing.allow_client_unload,
            timeout=settings.proxy.first_byte_timeout,
            witness=self.witness,
            hide_pods=settings.security.hide_pod_names,
        )
        self._num_ctx_pins = settings.routing.num_ctx_pins()

    # ------------------------------------------------------------------ entry
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """An inference request, parsed and admitted by the pipeline: route, forward, stream."""
        record = request[RECORD]
        req, note = self._pin_num_ctx(request[PARSED])
        if req.intent is Intent.UNLOAD and req.pin is None:
            return await self.unloader.handle(request, req, record)
        spec = spec_for(request.path)
        affinity = None
        wanted = self.settings.routing.affinity and spec is not None and spec.affinity
        if wanted and req.pin is None:
            affinity = affinity_key(req.doc, req.key, session_header(request.headers))
        aff_backend = self.shared.affinity(affinity) if affinity else None
        claim = Claim(
            req.key,
            takes_slot=spec is not None and spec.quota,  # /api/show takes no slot
            quota=request.get(QUOTA),
            affinity=affinity,
        )
        try:
            ranked = await self._claim(request, req, record, aff_backend, claim)
            return await self._attempts(request, req, record, claim, ranked, note)
        finally:
            if claim.lease is not None:  # claimed, never used by an attempt
                await self.claims.release(claim, record)

    def _pin_num_ctx(self, req: ParsedRequest) -> tuple[ParsedRequest, str]:
        """The request with its model's pinned ``num_ctx``, and a note when that changed it."""
        pinned = self._num_ctx_pins.get(req.key)
        if pinned is None or req.num_ctx == pinned:
            return req, ""
        return with_num_ctx(req, pinned), f"num_ctx {req.num_ctx or 'default'}->{pinned} (pinned)"

    async def _claim(
        self,
        request: web.Request,
        req: ParsedRequest,
        record: RequestRecord,
        aff_backend: str | None,
        claim: Claim,
    ) -> tuple[Choice, ...]:
        """The ranked pods to try, a slot claimed on the first when the route takes one."""
        trace = request[TRACE]
        if self.waitroom is not None and claim.takes_slot and req.intent is Intent.INFER:
            resumer = self.resumer
            waiting = waiting_for(
                request,
                req,
                record,
                aff_backend,
                tenant_header=self.settings.queue.tenant_header,
                default_output_tokens=self.settings.queue.default_output_tokens,
                tokens=self.lessons.tokens,
                rates=self.lessons.rates if resumer is not None else None,
                now=self.clock(),
            )
            if resumer is not None:
                claim.resume = resumer.prepare(request.path, req.doc, waiting, req.stream)
            trace.waiting(waiting.tenant, str(waiting.priority))
            ranked = await self.claims.late(waiting, record, claim, pinned=req.pin is not None)
            if self.waitroom.scheduler is not None:
                record.queue_estimate = self.waitroom.granted_estimates.pop(waiting.id, None)
            trace.waited(ranked[0].backend, record.queue_wait or 0.0)
            trace.routed(req.model, ranked)
            return ranked
        route_req = RouteRequest(
            req.key,
            req.model,
            req.pin,
            aff_backend,
            num_ctx=req.num_ctx,
            load_only=req.intent is Intent.LOAD,
        )
        ranked = self.route(route_req)
        if claim.takes_slot:
            ranked = await self.claims.early(route_req, ranked, record.request_id, claim)
        trace.routed(req.model, ranked)
        return ranked

    async def _attempts(
        self,
        request: web.Request,
        req: ParsedRequest,
        record: RequestRecord,
        claim: Claim,
        ranked: tuple[Choice, ...],
        note: str,
    ) -> web.StreamResponse:
        """Try the ranked pods in turn, within the attempt and time budgets, until one
        answers; a failure before the first byte moves on unless retrying is unsafe."""
        snapshot = self.view.snapshot
        deadline = self.clock() + self.settings.proxy.retry_budget
        failures: list[AttemptFailed] = []
        trace = request[TRACE]
        for n, choice in enumerate(ranked[: self.settings.proxy.max_attempts]):
            if n and self.clock() > deadline:
                break
            state = snapshot.get(choice.backend)
            if state is None:
                continue
            record.attempts += 1
            record.backend, record.reason = choice.backend, choice.reason
            trace.attempt(
                record.attempts,
                choice.backend,
                state.backend.url,
                request.path,
                record.retries[-1] if record.retries else "",
            )
            try:
                return await self._forward(
                    Attempt(request, req, record, claim, choice, state.backend, note)
                )
            except AttemptFailed as failed:
                trace.attempt_failed(str(failed), failed.status)
                failures.append(failed)
                record.retries.append(str(failed))
                if not failed.retry:
                    break
        raise give_up(record.model, failures)

    # ---------------------------------------------------------------- forward
    async def _forward(self, at: Attempt) -> web.StreamResponse:
        """One attempt: send to its pod and relay the answer; :class:`AttemptFailed` before
        the first byte.  The slot is given back when the answer ends, fails or the client
        leaves, with what the request taught and its quota, in one call."""
        if at.choice.reason is Reason.PULL or self.pulls.under_way(at.backend.name, at.req.model):
            await self.pulls.pull(at.backend, at.req.model)
        await self.claims.lease_for(at.claim, at.backend, at.choice, at.record)
        if self.resumer is not None:
            self.resumer.watch(at)
        answered = False
        upstream: Response | None = None
        t0 = self.clock()
        try:
            upstream = await self._send(at, t0)
            await self._first_byte(at, upstream, t0)
            resp = await self._relay(at, upstream)
            answered = True
            at.request[TRACE].attempt_ended(at.record.status)
            return resp
        finally:
            if upstream is not None:
                upstream.close()  # idempotent after a complete read; aborts a live one
            if self.resumer is not None:
                self.resumer.forget(at)
            if at.claim.takes_slot:  # usage per tenant: the seconds this pod's slot was held
                at.record.slot_seconds += self.clock() - t0
            await self.claims.release(at.claim, at.record, answered)

    async def _send(self, at: Attempt, t0: float) -> Response:
        """The pod's answer, once its status and headers are in."""
        request, backend = at.request, at.backend
        timeout = self.settings.proxy.first_byte_timeout
        resume = at.claim.resume
        body = (resume.first_body() if resume is not None else None) or at.req.body
        headers = forwarded(request)
        request[TRACE].propagate(headers)  # the attempt's traceparent (tracing off: the caller's)
        try:
            async with asyncio.timeout(timeout):
                return await self.transport.send(
                    request.method, backend.url, request.path_qs, headers, body
                )
        except TimeoutError:
            # Not retried: the request may be running there (no double execution).
            raise AttemptFailed(
                backend.name, f"sent nothing for {timeout:g}s", retry=False, timeout=True
            ) from None
        except UpstreamError as exc:
            await self._penalise(backend.name, t0)
            raise AttemptFailed(backend.name, f"unreachable: {describe(exc)}", fast=True) from None

    async def _first_byte(self, at: Attempt, upstream: Response, t0: float) -> None:
        """Note the time to the first byte (and the load it waited for); a 5xx or a 404 is
        an :class:`AttemptFailed` with the pod's message, so the next pod is tried."""
        ttfb = at.record.ttfb = self.clock() - t0
        loaded = await self.claims.first_byte(at.claim)
        if loaded is not None:
            at.record.cold_load_seconds = loaded
        at.request[TRACE].first_byte(ttfb, loaded)
        status = upstream.status
        if status >= 500 or status == 404:
            body = b""
            try:
                async with asyncio.timeout(
                    min(self.settings.proxy.idle_timeout, _ERROR_BODY_SECONDS)
                ):
                    body = await upstream.read(LIMIT)
            except (UpstreamError, TimeoutError):
                pass
            if status >= 500 and ttfb < FAST_FAIL_SECONDS:
                await self._penalise(at.backend.name, t0)
            if status == 404:  # "model not found": the next request need not try it here
                self.witness.missing(at.backend.name, at.req.key)
            answer = error_message(body)
            raise AttemptFailed(
                at.backend.name,
                f"answered {status}: {answer or upstream.reason}",
                status=status,
                answer=answer,
            )
        if at.claim.takes_slot and status == 200:  # the pod holds the model now, or let it go
            await self._witness(at)
        await self.shared.clear_penalty(at.backend.name)

    async def _relay(self, at: Attempt, upstream: Response) -> web.StreamResponse:
        """Relay the answer to the client and end its stream as the relay's ending says."""
        state = at.claim.resume
        # Only an answer can be resumed: a pod's refusal (a 4xx) is relayed as it is.
        if self.resumer is not None and state is not None and upstream.status == 200:
            since = self.clock()
            try:
                return await self.resumer.relay(at, upstream)
            finally:
                # A resumed answer's relay spans its wait for a slot again: not timed.
                self._account(at, state.relay, since=since if not state.preemptions else None)
        record = at.record
        hide = self.settings.security.hide_pod_names
        resp = response_head(at, upstream, hide_pods=hide)
        record.status = upstream.status
        await resp.prepare(at.request)
        relay = Relay()
        since = self.clock()
        try:
            ending = await relay.run(upstream, at.request, resp, self.settings.proxy.idle_timeout)
        finally:
            record.bytes_out += relay.sent  # also when the client's leaving cancels the relay
            self._account(at, relay, learn=False)
        if ending is Ending.COMPLETE:
            await resp.write_eof()
            record.complete = True
            at.claim.learned = self.lessons.learn(at, relay, streamed_since=since)
        elif ending is Ending.CLIENT_GONE:
            record.client_gone = True  # closing upstream (the caller's finally) stops Ollama
        else:
            record.broken_stream = True
            cause = describe(relay.error) if relay.error is not None else ending
            broken = f"stream broken: {cause}"
            record.error = f"{at.backend.name}: {broken}"
            told = f"{ANY_POD}: {broken}" if hide else record.error
            await end_broken(at.request, resp, relay.content_type, relay.last, told)
        return resp

    def _account(
        self, at: Attempt, relay: Relay, *, learn: bool = True, since: float | None = None
    ) -> None:
        """Usage per tenant from what went out, at every ending, a cancel too (core.usage);
        what a complete answer taught, when the relay was a resume's (``since``: its first
        byte, when it was relayed in one go)."""
        at.record.usage = usage_of(
            relay.tail, relay.chunks, lambda: estimate_tokens(at.req.doc, at.request.path).prompt
        )
        if learn and at.record.complete:
            at.claim.learned = self.lessons.learn(at, relay, streamed_since=since)

    async def _witness(self, at: Attempt) -> None:
        """Count in the fleet view at once what a pod that began answering did: it has
        the model loaded now (a load, a cold request, ``model@pod``), or, for an unload sent
        to the pod a client named, no longer has it (core.observed)."""
        pod, req = at.backend.name, at.req
        if req.intent is Intent.UNLOAD:
            await self.witness.unloaded(pod, req.key)
        else:
            self.witness.answered(pod, req.key, req.model, req.doc.get("keep_alive"))

    async def _penalise(self, backend: str, since: float) -> None:
        """A pod that failed fast (refused, 5xx at once) is broken rather than busy: cool it."""
        if self.clock() - since < FAST_FAIL_SECONDS:
            await self.shared.penalise(backend, self.settings.routing.penalty_seconds)
