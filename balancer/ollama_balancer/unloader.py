"""The unload fan-out: a request that unloads a model (``keep_alive: 0`` with no prompt)
goes to every pod where the model is loaded or loading, and is answered once.

Which pods, and whether pinned copies may be unloaded, is the pure plan's
(:func:`~ollama_balancer.core.unload.plan_unload`); this sends it and merges the replies:
the first pod that unloaded answers, else the request fails as every attempt did.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from .core.errors import AttemptFailed, Forbidden, give_up
from .core.fleetstate import FleetState
from .core.rankers import Reason
from .core.record import RequestRecord
from .core.requests import ParsedRequest
from .core.unload import plan_unload, unload_answer
from .fanout import fan_out
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
    ) -> None:
        """``allow_pinned``: copies pinned forever may be unloaded too; ``timeout``: seconds
        each pod has to answer (its first-byte timeout); ``witness``: told which pods
        unloaded it, so the fleet view counts it at once."""
        self.fleet = fleet
        self.transport = transport
        self.allow_pinned = allow_pinned
        self.timeout = timeout
        self.witness = witness

    async def handle(
        self, request: web.Request, req: ParsedRequest, record: RequestRecord
    ) -> web.StreamResponse:
        record.reason = Reason.UNLOAD
        fleet = self.fleet()
        plan = plan_unload(fleet, req.key, wall=datetime.now(UTC), allow_pinned=self.allow_pinned)
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
        if self.witness is not None:
            for reply in replies:
                if reply.status == 200:
                    await self.witness.unloaded(reply.pod, req.key)
        for reply in replies:
            if reply.status == 200:
                resp = web.Response(body=reply.body, content_type="application/json")
                resp.headers["X-Ollama-Backend"] = record.backend
                resp.headers["X-Route-Reason"] = Reason.UNLOAD
                return resp
        failures = [
            AttemptFailed(
                r.pod,
                f"answered {r.status}: {r.message}" if r.status else f"unreachable: {r.error}",
                status=r.status or None,
            )
            for r in replies
        ]
        record.retries.extend(str(f) for f in failures)
        raise give_up(req.model, failures)
