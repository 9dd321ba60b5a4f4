"""The unload fan-out: a request that unloads a model (``keep_alive: 0`` with no prompt)
goes to every pod where the model is loaded or loading, and is answered once.

Which pods, and whether pinned copies may be unloaded, is the pure plan's
(:func:`~ollama_balancer.core.unload.plan_unload`); this sends it and merges the replies.
The answer never claims more than was done:

* every pod sent the unload unloaded it: Ollama's answer (the first pod's), with
  ``X-Ollama-Backend`` listing the pods and, when pinned copies stayed,
  ``X-Ollama-Kept: pod=pinned`` (and the same in the request's log line);
* some did and some failed: an error naming both, so the client knows a copy is left
  (sending the unload again reaches only what is left);
* none did: the error every attempt met.

Each pod that unloaded is counted in the fleet view at once (:class:`~.witness.Witness`),
as each copy a request loaded was counted at its first byte, so the next unload neither
misses a fresh copy nor goes again to one already gone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from .core.errors import ANY_POD, RETRY_DOWN, AttemptFailed, Forbidden, Unavailable, give_up
from .core.fleetstate import FleetState
from .core.rankers import Reason
from .core.record import RequestRecord
from .core.requests import ParsedRequest
from .core.unload import PINNED, kept_header, pinned_refusal, plan_unload, unload_answer
from .fanout import PodReply, fan_out
from .proxying.headers import forwarded
from .upstream import Sender
from .witness import Witness

__all__ = ["Unloader"]


class Unloader:
    """Unloads a model everywhere it is loaded (or loading), as one request."""

    def __init__(
        self,
        fleet: Callable[[], FleetState],
        transport: Sender,
        *,
        allow_pinned: bool,
        timeout: float,
        witness: Witness | None = None,
        hide_pods: bool = False,
    ) -> None:
        """``allow_pinned``: copies pinned forever may be unloaded too; ``timeout``: seconds
        each pod has to answer (its first-byte timeout); ``witness``: told which pods
        unloaded it, so the fleet view counts it at once; ``hide_pods``: no pod names in
        the answer (``hide_pod_names``)."""
        self.fleet = fleet
        self.transport = transport
        self.allow_pinned = allow_pinned
        self.timeout = timeout
        self.witness = witness
        self.hide_pods = hide_pods

    async def handle(
        self, request: web.Request, req: ParsedRequest, record: RequestRecord
    ) -> web.StreamResponse:
        record.reason = Reason.UNLOAD
        fleet = self.fleet()
        plan = plan_unload(fleet, req.key, wall=datetime.now(UTC), allow_pinned=self.allow_pinned)
        kept = {pod: PINNED for pod in plan.kept}
        record.outcomes.update({pod: f"kept: {why}" for pod, why in kept.items()})
        if plan.refused:
            raise Forbidden(
                pinned_refusal(req.model, ", ".join(plan.refused)),
                anonymous=pinned_refusal(req.model, _count(len(plan.refused))),
            )
        record.backend = ",".join(plan.targets)
        if not plan.targets:
            # Loaded nowhere: what Ollama answers, without touching a pod or a load metric.
            return web.json_response(unload_answer(request.path, req.model, datetime.now(UTC)))
        replies = await fan_out(
            self.transport,
            [fleet.by_name[name].backend for name in plan.targets],  # planned on this state
            "POST",
            request.path_qs,
            req.body,
            timeout=self.timeout,
            headers=forwarded(request),
        )
        record.attempts = len(replies)
        done = [r for r in replies if r.status == 200]
        failures = [_failure(r) for r in replies if r.status != 200]
        for reply in done:
            record.outcomes[reply.pod] = "unloaded"
            if self.witness is not None:
                await self.witness.unloaded(reply.pod, req.key)
        for failed in failures:
            record.outcomes[failed.backend] = failed.message
        record.retries.extend(str(f) for f in failures)
        if failures and done:
            raise _partly(req.model, [r.pod for r in done], failures)
        if failures:
            raise give_up(req.model, failures)
        resp = web.Response(body=done[0].body, content_type="application/json")
        if not self.hide_pods:
            resp.headers["X-Ollama-Backend"] = record.backend
            resp.headers["X-Route-Reason"] = Reason.UNLOAD
            if kept:
                resp.headers["X-Ollama-Kept"] = kept_header(kept)
        return resp


def _failure(reply: PodReply) -> AttemptFailed:
    return AttemptFailed(
        reply.pod,
        f"answered {reply.status}: {reply.message}"
        if reply.status
        else f"unreachable: {reply.error}",
        status=reply.status or None,
    )


def _partly(model: str, done: list[str], failures: list[AttemptFailed]) -> Unavailable:
    """Some copies unloaded, some not: a failure, since the model is still loaded."""
    failed = "; ".join(str(f) for f in failures)
    head = f"{model} is still loaded: unloaded on"
    return Unavailable(
        f"{head} {', '.join(done)}, but not on {failed}",
        retry_after=RETRY_DOWN,
        anonymous=f"{head} {_count(len(done))}, but not on "
        + "; ".join(f"{ANY_POD}: {f.message}" for f in failures),
    )


def _count(n: int) -> str:
    return "1 pod" if n == 1 else f"{n} pods"
