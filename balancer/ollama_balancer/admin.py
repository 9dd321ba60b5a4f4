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
from ollama_wire.client import OllamaClient, OllamaError

from .polling import FleetView
from .proxy import error_response, request_id
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
        return error_response(request.path, 403, DENIED.format(path=request.path))

    def _targets(self, request: web.Request) -> list[Backend] | web.Response:
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
                return error_response(request.path, 404, f"backend '{pin}' is not available")
        if not routable:
            return error_response(
                request.path, 503, "no Ollama backend is available", retry_after=5
            )
        return routable

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return error_response(request.path, 400, "missing request body")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            return error_response(request.path, 400, f"invalid JSON: {exc}")
        if not isinstance(doc, dict) or not (doc.get("model") or doc.get("name")):
            return error_response(request.path, 400, "model is required")
        return doc

    async def _fanout(
        self, request: web.Request
    ) -> tuple[dict[str, Any], list[Backend], str] | web.StreamResponse:
        """Shared prologue: refused unless fan-out is on, a valid body, the target pods."""
        if self.settings.admin != "fanout":
            return await self.deny(request)
        doc = await self._body(request)
        if isinstance(doc, web.Response):
            return doc
        targets = self._targets(request)
        if isinstance(targets, web.Response):
            return targets
        return doc, targets, str(doc.get("model") or doc.get("name"))

    async def pull(self, request: web.Request) -> web.StreamResponse:
        prologue = await self._fanout(request)
        if isinstance(prologue, web.StreamResponse):
            return prologue
        doc, targets, model = prologue
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
                return error_response(request.path, 500, message)
            await resp.write(json.dumps({"error": message}).encode() + b"\n")
            await resp.write_eof()
            return resp
        if resp is None:
            return web.json_response({"status": "success"})
        await resp.write(b'{"status":"success"}\n')
        await resp.write_eof()
        return resp

    async def delete(self, request: web.Request) -> web.StreamResponse:
        prologue = await self._fanout(request)
        if isinstance(prologue, web.StreamResponse):
            return prologue
        _, targets, model = prologue

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
            real = [f"{n}: {e.message}" for n, e in errors if e.status != 404]
            if real:
                return error_response(
                    request.path, 500, f"deleted on some pods, failed on: {'; '.join(real)}"
                )
            return web.Response(status=200)
        if all(e.status == 404 for _, e in errors):
            return error_response(request.path, 404, errors[0][1].message)
        return error_response(request.path, 500, "; ".join(f"{n}: {e.message}" for n, e in errors))
