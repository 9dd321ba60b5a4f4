"""Admin endpoints: refused by default, or fanned out to the pods.

Model storage is declared with a ModelPool and kept by the operator, so
``/api/pull``, ``/api/delete``, ``/api/create``, ``/api/copy``, ``/api/push``
and ``/api/blobs/*`` are refused (403).  With ``admin: fanout``, ``/api/pull``
and ``/api/delete`` go to every routable pod (or the one named by
``X-Ollama-Backend``) and the answers are merged: one progress stream whose
byte counts are the sums over pods, ending in ``success`` only if every pod
succeeded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ollama_wire.backend import Backend
from ollama_wire.client import OllamaClient, OllamaError, OllamaStatusError

from .context import PARSED, request_id
from .errors import BackendAnswer, Forbidden, NotFound, Unavailable
from .polling import FleetView
from .settings import BalancerSettings

__all__ = ["Admin"]

DENIED = (
    "{path} is disabled on ollama-fleet: models are managed by the ModelPool operator "
    "(kubectl apply -f modelpool.yaml); set admin: fanout on the balancer to allow pull/delete"
)


class Admin:
    def __init__(
        self,
        settings: BalancerSettings,
        view: FleetView,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.view = view
        self._session = session
        self._clock = clock

    async def deny(self, request: web.Request) -> web.StreamResponse:
        raise Forbidden(DENIED.format(path=request.path))

    def _targets(self, request: web.Request) -> list[Backend]:
        snap = self.view.snapshot
        now = self._clock()
        routable = [
            s.backend
            for s in snap.backends
            if s.routable(now, self.settings.fail_threshold, self.settings.stale_after)
        ]
        pin = request.headers.get("X-Ollama-Backend")
        if pin:
            routable = [b for b in routable if b.name == pin]
            if not routable:
                raise NotFound(f"backend '{pin}' is not available")
        if not routable:
            raise Unavailable("no Ollama backend is available", retry_after=5)
        return routable

    async def _fanout(self, request: web.Request) -> tuple[dict[str, Any], list[Backend], str]:
        """Shared prologue: refused unless fan-out is on; the parsed body; the target pods."""
        if self.settings.admin != "fanout":
            raise Forbidden(DENIED.format(path=request.path))
        parsed = request[PARSED]  # read, parsed and authorised once by the pipeline
        return parsed.doc, self._targets(request), parsed.model

    async def pull(self, request: web.Request) -> web.StreamResponse:
        doc, targets, model = await self._fanout(request)
        stream = doc.get("stream", True) is not False
        queue: asyncio.Queue[tuple[str, dict[str, Any] | None, str]] = asyncio.Queue()

        async def one(b: Backend) -> None:
            client = OllamaClient(self._session(), b.url, timeout=self.settings.connect_timeout)
            try:
                async for progress in client.pull(model, idle_timeout=self.settings.idle_timeout):
                    await queue.put((b.name, progress, ""))
                await queue.put((b.name, None, ""))
            except OllamaError as exc:
                await queue.put((b.name, None, exc.message or str(exc)))

        tasks = [asyncio.ensure_future(one(b)) for b in targets]
        resp: web.StreamResponse | None = None
        if stream:
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "application/x-ndjson",
                    "X-Request-ID": request_id(request),
                }
            )
            await resp.prepare(request)
        per_blob: dict[tuple[str, str], tuple[int, int]] = {}
        failed: dict[str, str] = {}
        pending = len(tasks)
        last_status = ""
        try:
            while pending:
                name, progress, error = await queue.get()
                if progress is None:
                    pending -= 1
                    if error:
                        failed[name] = error
                    continue
                status = str(progress.get("status", ""))
                if status == "success":
                    continue
                digest = str(progress.get("digest", ""))
                if digest:
                    per_blob[(name, digest)] = (
                        int(progress.get("total") or 0),
                        int(progress.get("completed") or 0),
                    )
                    total = sum(t for (_, d), (t, _) in per_blob.items() if d == digest)
                    done = sum(c for (_, d), (_, c) in per_blob.items() if d == digest)
                    merged: dict[str, Any] = {"status": status, "digest": digest}
                    if total:
                        merged["total"] = total
                    if done:
                        merged["completed"] = done
                elif status == last_status:
                    continue  # each pod says "pulling manifest": say it once
                else:
                    merged = {"status": status}
                last_status = status
                if resp is not None:
                    await resp.write(json.dumps(merged).encode() + b"\n")
        finally:
            for t in tasks:
                t.cancel()
        if failed:
            msg = "; ".join(f"{n}: {e}" for n, e in sorted(failed.items()))
            message = f"pull of '{model}' failed on {len(failed)} of {len(tasks)} pods: {msg}"
            if resp is None:
                raise BackendAnswer(500, message)  # what one Ollama answers for a failed pull
            await resp.write(json.dumps({"error": message}).encode() + b"\n")
            await resp.write_eof()
            return resp
        if resp is None:
            return web.json_response({"status": "success"})
        await resp.write(b'{"status":"success"}\n')
        await resp.write_eof()
        return resp

    async def delete(self, request: web.Request) -> web.StreamResponse:
        _, targets, model = await self._fanout(request)

        async def one(b: Backend) -> OllamaError | None:
            try:
                await OllamaClient(self._session(), b.url, self.settings.connect_timeout).delete(
                    model
                )
            except OllamaError as exc:
                return exc
            return None

        results = await asyncio.gather(*(one(b) for b in targets))
        errors = [(b.name, r) for b, r in zip(targets, results, strict=True) if r is not None]
        if len(errors) < len(targets):
            real = [f"{n}: {e.message}" for n, e in errors if not _not_found(e)]
            if real:
                raise BackendAnswer(500, f"deleted on some pods, failed on: {'; '.join(real)}")
            return web.Response(status=200)
        if all(_not_found(e) for _, e in errors):
            raise NotFound(errors[0][1].message)
        raise BackendAnswer(500, "; ".join(f"{n}: {e.message}" for n, e in errors))


def _not_found(exc: OllamaError) -> bool:
    return isinstance(exc, OllamaStatusError) and exc.status == 404
