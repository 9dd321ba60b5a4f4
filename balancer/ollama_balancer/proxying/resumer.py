"""Taken back and resumed: the relay of a request the scheduler may preempt.

With ``queue_policy=reclaim`` a request whose API can continue a partial answer
(:func:`~..core.resume.resumable`) is relayed by :meth:`Resumer.relay` instead of the
plain relay:

* every byte the client receives is kept (:attr:`Relay.kept`), and the relay is registered
  under its lease, so that a preemption from any replica
  (:meth:`SharedState.on_preempt <..core.shared.protocol.SharedState.on_preempt>`) stops
  it at the end of the next frame: the client holds a well-formed partial answer;
* the slot is given back at once (the request it was taken for binds to it), the rest of
  the work waits in the wait room as a continuation (its original arrival, its
  preemptions counted, the same pod preferred, whose prompt cache serves it), and is
  relayed through a stitcher into the same client stream — which simply goes on, its final
  metrics adding up (:mod:`..core.resume`);
* a client that asked for one JSON answer never sees a stream: the pod is asked for one,
  and the answer is assembled when it ends (:func:`~..core.resume.assemble`).

A request is preempted at most ``queue_max_preemptions`` times (the policy never picks it
again), and only while generating (Ollama notices a closed connection only after the
prompt is read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from ..context import TRACE
from ..core.errors import ANY_POD, AttemptFailed, BadGateway, give_up
from ..core.queueing import Waiting
from ..core.rankers import Choice
from ..core.resume import (
    IncompleteStream,
    Partial,
    assemble,
    continuation,
    dialect_of,
    partial_of,
    stitcher,
)
from ..core.tokens import RateBook
from ..upstream import Response, Sender, UpstreamError, describe
from ..witness import Witness
from .attempt import Attempt
from .claims import SlotClaims
from .headers import balancer_headers, forwarded, response_head
from .relay import Ending, Relay, end_broken
from .resumable import Resumable

__all__ = ["Preemptions", "Resumer"]

#: The least slot-seconds a continuation is expected to hold (it reads the prompt again).
_MIN_EXPECTED = 0.5


class Preemptions:
    """The relays of this replica the scheduler may stop, by lease member."""

    def __init__(self) -> None:
        self._relays: dict[str, Relay] = {}

    def watch(self, member: str, relay: Relay) -> None:
        self._relays[member] = relay

    def forget(self, member: str) -> None:
        self._relays.pop(member, None)

    def preempt(self, member: str) -> None:
        """Stop the relay of lease ``member`` at its next frame's end (if relayed here)."""
        relay = self._relays.get(member)
        if relay is not None:
            relay.stop = True


class Resumer:
    """Relays resumable requests, and resumes them when the scheduler takes them back."""

    def __init__(
        self,
        claims: SlotClaims,
        transport: Sender,
        *,
        idle_timeout: float,
        first_byte_timeout: float,
        max_attempts: int,
        rates: RateBook,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, str, float], None] | None = None,
        witness: Witness | None = None,
        hide_pods: bool = False,
    ) -> None:
        self.rates = rates
        #: No pod names in the client's answer (``hide_pod_names``).
        self.hide_pods = hide_pods
        self.claims = claims
        self.transport = transport
        self.idle_timeout = idle_timeout
        self.first_byte_timeout = first_byte_timeout
        self.max_attempts = max_attempts
        self.clock = clock
        self.preemptions = Preemptions()
        #: (model, outcome, waste seconds) per preempted request: the resume metrics.
        self.observe = observe
        #: Told when a continuation's pod answers: it may have loaded the model for it.
        self.witness = witness
        claims.shared.on_preempt(self.preemptions.preempt)

    def prepare(
        self, path: str, req_doc: dict[str, Any], waiting: Waiting, stream: bool
    ) -> Resumable | None:
        """The resume state of a request the scheduler may take back, else None."""
        dialect = dialect_of(path)
        if dialect is None or not waiting.resumable:
            return None
        return Resumable(waiting, dialect, req_doc, assembled=not stream, path=path)

    def watch(self, at: Attempt) -> None:
        """Register ``at``'s relay under its lease (call once the lease is taken)."""
        state, lease = at.claim.resume, at.claim.lease
        if state is not None and lease is not None:
            self.preemptions.watch(lease.member, state.relay)

    def forget(self, at: Attempt) -> None:
        lease = at.claim.lease
        if lease is not None:
            self.preemptions.forget(lease.member)

    # ------------------------------------------------------------------ relay
    async def relay(self, at: Attempt, upstream: Response) -> web.StreamResponse:
        """Relay ``at``'s answer, resuming it as often as it is taken back; end the client's
        response as the last ending says."""
        state = at.claim.resume
        assert state is not None
        record = at.record
        write = _discard if state.assembled else await self._open(at, upstream, state)
        relay = state.relay
        ending = await relay.run_kept(upstream, at.request, write, self.idle_timeout, end=state.end)
        current: Response | None = upstream
        while ending is Ending.PREEMPTED:
            if current is not None:
                current.close()  # Ollama stops generating; the slot is the beneficiary's
            at.request[TRACE].preempted(at.backend.name, "reclaimed")
            self.forget(at)
            await self.claims.release(at.claim, record)
            ending, current = await self._resume(at, state, write, at.backend.name)
        if not state.assembled:
            record.bytes_out += relay.sent
        return await self._finish(at, state, ending, current)

    async def _open(
        self, at: Attempt, upstream: Response, state: Resumable
    ) -> Callable[[bytes], Any]:
        resp = state.resp = response_head(at, upstream, hide_pods=self.hide_pods)
        at.record.status = upstream.status
        await resp.prepare(at.request)
        return resp.write

    async def _resume(
        self, at: Attempt, state: Resumable, write: Callable[[bytes], Any], victim: str
    ) -> tuple[Ending, Response | None]:
        """Wait for a slot again and relay the rest of the answer through a stitcher."""
        relay, record = state.relay, at.record
        partial = partial_of(state.dialect, relay.kept)
        model = at.req.key
        if partial.ended:  # the answer was complete: nothing to resume
            self._observed(model, "finished", 0.0)
            return Ending.COMPLETE, None
        if not partial.resumable:
            self._observed(model, "failed", 0.0)
            relay.error = RuntimeError(f"preempted, not resumable: {partial.why_not}")
            return Ending.BROKEN, None
        state.preemptions += 1
        record.preemptions = state.preemptions
        body = orjson.dumps(continuation(state.path, state.doc, partial))
        waiting = replace(
            state.waiting,
            id=f"{state.waiting.id}~{state.preemptions}",
            preemptions=state.preemptions,
            # Its place among its tenant's requests: when it reached the balancer (the entry
            # it was prepared from was never queued, so it has no time of its own).
            arrival=record.started if state.waiting.arrival is None else state.waiting.arrival,
            affinity_backend=victim,  # the slot's prompt cache holds the partial answer
            pin=None,
            expected_seconds=max(
                _MIN_EXPECTED,
                state.waiting.expected_seconds - partial.tokens * self.rates.decode_seconds(model),
            ),
        )
        ranked = await self.claims.late(waiting, record, at.claim, pinned=False)
        failures: list[AttemptFailed] = []
        for choice in ranked[: self.max_attempts]:
            resumed = await self._attempt(at, choice, body, partial, write)
            if isinstance(resumed, AttemptFailed):
                failures.append(resumed)
                record.retries.append(str(resumed))
                continue
            return resumed
        self._observed(model, "failed", 0.0)
        raise give_up(record.model, failures)

    async def _attempt(
        self,
        at: Attempt,
        choice: Choice,
        body: bytes,
        partial: Partial,
        write: Callable[[bytes], Any],
    ) -> tuple[Ending, Response] | AttemptFailed:
        state = at.claim.resume
        assert state is not None
        snapshot_state = self.claims.view.snapshot.get(choice.backend)
        if snapshot_state is None:
            return AttemptFailed(choice.backend, "left the fleet")
        backend = snapshot_state.backend
        await self.claims.lease_for(at.claim, backend, choice, at.record)
        at.backend, at.choice = backend, choice
        at.record.backend = backend.name
        at.record.attempts += 1
        self.watch(at)
        state.relay.stop = False
        t0 = self.clock()
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                upstream = await self.transport.send(
                    "POST", backend.url, at.request.path_qs, forwarded(at.request), body
                )
        except (TimeoutError, UpstreamError) as exc:
            return AttemptFailed(backend.name, f"continuation: {describe(exc)}")
        await self.claims.first_byte(at.claim)
        if upstream.status != 200:
            upstream.close()
            return AttemptFailed(
                backend.name, f"continuation answered {upstream.status}", status=upstream.status
            )
        if self.witness is not None:
            keep_alive = at.req.doc.get("keep_alive")
            self.witness.answered(backend.name, at.req.key, at.req.model, keep_alive)
        self._observed(at.req.key, "resumed", self.clock() - t0)
        at.request[TRACE].resumed(backend.name, partial.tokens)
        stitch = stitcher(partial, state.doc, clock=self.clock, started=at.record.started)
        ending = await state.relay.run_kept(
            upstream,
            at.request,
            write,
            self.idle_timeout,
            end=state.end,
            transform=stitch.feed,
        )
        if ending is Ending.COMPLETE:
            tail = stitch.end()
            if tail:
                await write(tail)
                state.relay.kept.append(tail)
                state.relay.sent += len(tail)
                state.relay.prev, state.relay.last = state.relay.last, tail
        return ending, upstream

    async def _finish(
        self, at: Attempt, state: Resumable, ending: Ending, upstream: Response | None
    ) -> web.StreamResponse:
        record, relay = at.record, state.relay
        if upstream is not None:
            upstream.close()
        if state.assembled:
            if ending is not Ending.COMPLETE:
                cause = describe(relay.error) if relay.error is not None else ending
                raise _broken(at.backend.name, cause)
            try:
                answer = assemble(state.dialect, relay.kept)
            except IncompleteStream as exc:
                raise _broken(at.backend.name, exc) from None
            whole = web.Response(body=answer.body, headers={"Content-Type": answer.content_type})
            whole.headers.update(balancer_headers(at, hide_pods=self.hide_pods))
            record.status = 200
            record.bytes_out += len(answer.body)
            record.complete = True
            return whole
        resp = state.resp
        assert resp is not None
        if ending is Ending.COMPLETE:
            await resp.write_eof()
            record.complete = True
        elif ending is Ending.CLIENT_GONE:
            record.client_gone = True
        else:
            record.broken_stream = True
            cause = describe(relay.error) if relay.error is not None else ending
            broken = f"stream broken: {cause}"
            record.error = f"{at.backend.name}: {broken}"
            told = f"{ANY_POD}: {broken}" if self.hide_pods else record.error
            await end_broken(at.request, resp, relay.content_type, relay.last, told)
        return resp

    def _observed(self, model: str, outcome: str, waste: float) -> None:
        if self.observe is not None:
            self.observe(model, outcome, waste)


def _broken(pod: str, cause: object) -> BadGateway:
    return BadGateway(
        f"{pod}: answer broken: {cause}", anonymous=f"{ANY_POD}: answer broken: {cause}"
    )


async def _discard(_chunk: bytes) -> None:
    """The client's stream of an assembled answer: nothing is sent until it is whole."""
