"""The unload fan-out: a request that unloads a model (``keep_alive: 0`` with no prompt)
goes to every pod where the model is loaded or loading, and is answered once.

Which pods, and whether pinned copies may be unloaded, is the pure plan's
(:func:`~ollama_balancer.core.unload.plan_unload`); this sends it and merges the replies:
the first pod that unloaded answers, else the request fails as every attempt did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from .core.errors import AttemptFailed, Forbidden, give_up
from .core.rankers import Reason
from .core.record import RequestRecord
from .core.requests import ParsedRequest
from .core.shared.protocol import SharedState
from .core.unload import plan_unload, unload_answer
from .fanout import PodReply, fan_out
from .polling import FleetTracker
from .proxying.headers import forwarded
from .settings import BalancerSettings
from .upstream import Sender

__all__ = ["Unloader"]


class Unloader:
    """Unloads a model everywhere it is loaded (or loading), as one request."""

    def __init__(
        self,
        settings: BalancerSettings,
        view: FleetTracker,
        shared: SharedState,
        transport: Sender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.view = view
        self.shared = shared
        self.transport = transport
        self.clock = clock

    async def handle(
        self, request: web.Request, req: ParsedRequest, record: RequestRecord
    ) -> web.StreamResponse:
        record.reason = Reason.UNLOAD
        plan = plan_unload(
            self.view.snapshot,
            self.shared.occupancy(),
            req.key,
            now=self.clock(),
            wall=datetime.now(UTC),
            fail_threshold=self.settings.fail_threshold,
            stale_after=self.settings.stale_after,
            allow_pinned=self.settings.allow_client_unload,
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
        snapshot = self.view.snapshot
        targets = [s.backend for name in plan.targets if (s := snapshot.get(name)) is not None]
        replies = await fan_out(
            self.transport,
            targets,
            "POST",
            request.path_qs,
            req.body,
            timeout=self.settings.first_byte_timeout,
            headers=forwarded(request),
        )
        by_pod = {r.pod: r for r in replies}  # a pod that left the fleet meanwhile: no reply
        replies = [by_pod.get(name, PodReply(name, 0)) for name in plan.targets]
        record.attempts = len(replies)
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
