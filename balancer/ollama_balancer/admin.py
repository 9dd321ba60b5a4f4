"""Admin endpoints: refused by default, or fanned out to the pods.

Model storage is declared with a ModelPool and kept by the operator, so with the
default ``admin: deny`` every admin path (``/api/pull``, ``/api/delete``,
``/api/create``, ``/api/copy``, ``/api/push``, ``/api/blobs/*``) is refused with
a 403 that says what ``admin: fanout`` would allow.  With ``admin: fanout`` each
request goes to every routable pod (or to the one ``X-Ollama-Backend`` names)
and the pods' answers become the one answer a single Ollama would give:

* ``/api/pull`` and ``/api/create`` stream progress merged by
  :class:`~ollama_wire.progress.ProgressMerge`: each status once, in Ollama's
  order, a layer's bar with one copy's size and the slowest pod's progress,
  and ``success`` only when every pod succeeded (else an ``error`` line naming
  the pods that failed);
* ``/api/delete`` and ``/api/copy`` succeed where the model is: a pod without it
  (404) is no failure unless no pod has it;
* ``HEAD /api/blobs/<digest>`` is 200 only when every pod has the blob, so a
  client uploads what any pod lacks; ``POST`` stores it on every pod before
  answering, so the ``/api/create`` that follows finds it everywhere.

``/api/push`` uploads to a registry from one server's disk; it is refused under
both settings.

What the pods answered is counted in the fleet view at once (:class:`~.witness.Witness`):
a model pulled, created or copied onto a pod is installed there, a deleted one is not,
before the next ``/api/tags`` poll says so.

A fanned-out request says where it went, as an unload does: ``X-Ollama-Backend`` lists
the pods it was sent to (unless ``hide_pod_names``), and its log line names them
(``backend``), counts them (``attempts``) and gives each pod's outcome (``outcomes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from ollama_wire.backend import Backend
from ollama_wire.names import InvalidModelName, canonical
from ollama_wire.progress import ProgressMerge

from .context import PARSED, RECORD, request_id
from .core.errors import ANY_POD, BackendAnswer, BadRequest, Forbidden, NotFound, Unavailable
from .core.fleet import BackendState
from .fanout import PodReply, fan_out
from .settings import BalancerSettings
from .upstream import ErrorAnswer, ProtocolError, Sender, UpstreamError, describe
from .upstream.calls import progress
from .witness import Witness

__all__ = ["FANNED_OUT", "Admin", "merge_answers", "refusal"]

#: Seconds one pod may take to store an uploaded blob (it may be gigabytes).
BLOB_UPLOAD_SECONDS = 600.0

#: What ``admin: fanout`` sends to every pod; nothing else is ever forwarded.
FANNED_OUT = ("/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/blobs")


def refusal(path: str, admin: str) -> str:
    """The 403 message of an admin path: why, and exactly what the setting allows."""
    fans = ", ".join(FANNED_OUT[:-1]) + " and " + FANNED_OUT[-1]
    if admin == "fanout":
        return (
            f"{path} is refused: admin: fanout sends {fans} to every pod, never "
            "/api/push (push from one Ollama server directly)"
        )
    return (
        f"{path} is refused: this balancer runs with admin: deny, models are managed by the "
        "ModelPool operator (kubectl apply -f modelpool.yaml); admin: fanout would send "
        f"{fans} to every pod (never /api/push)"
    )


Answer = tuple[str, int, str]
"""(pod, HTTP status (0: unreachable), error message) of one pod's answer."""


def answer_of(pod: str, exc: UpstreamError) -> Answer:
    """A pod's failure as an :data:`Answer`: its HTTP status, or what one Ollama would answer
    for it (500 for an error line inside a progress stream, 502 for a torn answer)."""
    if isinstance(exc, ErrorAnswer):
        return pod, 500 if exc.in_stream else exc.status, exc.message
    if isinstance(exc, ProtocolError):
        return pod, 502, str(exc)
    return pod, 0, describe(exc)


def reply_answer(reply: PodReply) -> Answer:
    """A pod's whole reply as an :data:`Answer` (a success carries no message)."""
    return reply.pod, reply.status, "" if reply.ok else reply.message


def merge_answers(answers: Sequence[Answer], action: str, *, names: bool = True) -> tuple[int, str]:
    """One answer from the pods' answers to a non-streamed admin request.

    Success (the best 2xx, ``""``) when every pod succeeded or lacked the model
    (404); the pods' own status and message when they all failed alike; else
    500 naming each pod that failed (``names`` false: "a pod" for each).
    """
    ok = [status for _, status, _ in answers if 200 <= status < 300]
    failed = [(pod, status, msg) for pod, status, msg in answers if not 200 <= status < 300]
    real = [f for f in failed if f[1] != 404]
    if ok and not real:
        return (201 if 201 in ok else 200), ""
    if not ok and len({(s, m) for _, s, m in failed}) == 1:
        return failed[0][1], failed[0][2]
    if not ok and not real:
        return 404, failed[0][2]
    detail = "; ".join(
        f"{pod if names else ANY_POD}: {msg or f'status {status}'}" for pod, status, msg in real
    )
    done = f"done on {len(ok)}, " if ok else ""
    return 500, f"{action} {done}failed on {len(real)} of {len(answers)} pods: {detail}"


class Admin:
    def __init__(
        self,
        settings: BalancerSettings,
        routable: Callable[[], Sequence[BackendState]],
        transport: Sender,
        witness: Witness | None = None,
    ) -> None:
        self.settings = settings
        #: The routable pods now (the balancer's fleet state decides which).
        self._routable = routable
        self.transport = transport
        self.witness = witness

    # ------------------------------------------------------------ entry points
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Any admin request: the one entry the app can route every admin path to."""
        path, method = request.path, request.method
        if self.settings.proxy.admin != "fanout" or path == "/api/push":
            raise Forbidden(refusal(path, self.settings.proxy.admin))
        if path.startswith("/api/blobs/"):
            if method == "HEAD":
                return await self._has_blob(request)
            return await self._create_blob(request)  # the route table allows HEAD and POST
        handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/api/pull": self.pull,
            "/api/create": self.create,
            "/api/delete": self.delete,
            "/api/copy": self.copy,
        }
        return await handlers[path](request)

    def _sent_to(self, request: web.Request, targets: Sequence[Backend]) -> dict[str, str]:
        """Note on the request's record the pods it goes to; the headers that say so."""
        record = request[RECORD]
        record.backend = ",".join(b.name for b in targets)
        record.attempts = len(targets)
        if self.settings.security.hide_pod_names:
            return {}
        return {"X-Ollama-Backend": record.backend}

    def _answer(
        self, request: web.Request, answers: Sequence[Answer], action: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The merged answer of non-streamed replies: an empty success, or the pods'
        failure passed on as theirs; each pod's outcome on the record."""
        _outcomes(request, answers)
        status, message = merge_answers(answers, action)
        if status < 300:
            return web.Response(status=status, headers=headers)
        anonymous = merge_answers(answers, action, names=False)[1]
        raise BackendAnswer(status or 502, message, anonymous=anonymous, headers=headers)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        return await self._progress(request, "pull")

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self._progress(request, "create")

    async def delete(self, request: web.Request) -> web.StreamResponse:
        def body(doc: dict[str, Any]) -> dict[str, Any]:
            return {"model": str(doc.get("model") or doc.get("name") or "")}

        def seen(witness: Witness, pod: str, doc: dict[str, Any]) -> None:
            name = body(doc)["model"]
            witness.deleted(pod, _key(name))

        return await self._each(request, "DELETE", "delete", body, seen)

    async def copy(self, request: web.Request) -> web.StreamResponse:
        def body(doc: dict[str, Any]) -> dict[str, Any]:
            return {
                "source": str(doc.get("source") or ""),
                "destination": str(doc.get("destination") or ""),
            }

        def seen(witness: Witness, pod: str, doc: dict[str, Any]) -> None:
            name = body(doc)["destination"]
            witness.pulled(pod, _key(name), name)

        return await self._each(request, "POST", "copy", body, seen)

    # ----------------------------------------------------------------- shared
    def _targets(self, request: web.Request) -> list[Backend]:
        routable = [s.backend for s in self._routable()]
        pin = request.headers.get("X-Ollama-Backend")
        if pin:
            routable = [b for b in routable if b.name == pin]
            if not routable:
                raise NotFound(f"backend '{pin}' is not available")
        if not routable:
            raise Unavailable("no Ollama backend is available", retry_after=5)
        return routable

    async def _prologue(self, request: web.Request) -> tuple[dict[str, Any], list[Backend]]:
        """Refused unless fan-out is on; a JSON object body; the target pods."""
        if self.settings.proxy.admin != "fanout":
            raise Forbidden(refusal(request.path, self.settings.proxy.admin))
        parsed = request.get(PARSED)
        if parsed is not None:  # a body naming a model: parsed once by the pipeline
            return parsed.doc, self._targets(request)
        raw = await request.read()  # read once by the pipeline; aiohttp keeps it
        if not raw.strip():
            raise BadRequest("missing request body")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest("the request body must be a JSON object")
        return doc, self._targets(request)

    async def _each(
        self,
        request: web.Request,
        method: str,
        action: str,
        body: Callable[[dict[str, Any]], dict[str, Any]],
        seen: Callable[[Witness, str, dict[str, Any]], None],
    ) -> web.StreamResponse:
        """A JSON request answered without a body (delete, copy), sent to every pod;
        ``seen`` counts what a pod that answered 200 did."""
        doc, targets = await self._prologue(request)
        headers = self._sent_to(request, targets)
        replies = await fan_out(
            self.transport,
            targets,
            method,
            request.path,
            json.dumps(body(doc)).encode(),
            timeout=self.settings.proxy.connect_timeout,
        )
        if self.witness is not None:
            for r in replies:
                if r.ok:
                    with contextlib.suppress(InvalidModelName):
                        seen(self.witness, r.pod, doc)
        return self._answer(request, [reply_answer(r) for r in replies], action, headers)

    async def _progress(self, request: web.Request, action: str) -> web.StreamResponse:
        """A progress endpoint (pull, create) on every pod, merged into one stream."""
        doc, targets = await self._prologue(request)
        headers = self._sent_to(request, targets)
        path = request.path
        stream = doc.get("stream", True) is not False
        queue: asyncio.Queue[tuple[str, dict[str, Any] | None, UpstreamError | None]]
        queue = asyncio.Queue()

        async def one(b: Backend) -> None:
            last = ""
            try:
                async for line in progress(
                    self.transport, b.url, path, doc, idle_timeout=self.settings.proxy.idle_timeout
                ):
                    last = str(line.get("status", ""))
                    await queue.put((b.name, line, None))
            except UpstreamError as exc:
                await queue.put((b.name, None, exc))
                return
            # Ollama ends with success or an error line: anything else was cut off.
            cut = None if last == "success" else ProtocolError(f"{action} stream ended early")
            await queue.put((b.name, None, cut))

        merge = ProgressMerge(b.name for b in targets)
        errors: list[Answer] = []
        resp: web.StreamResponse | None = None
        tasks = [asyncio.ensure_future(one(b)) for b in targets]
        try:
            while not merge.finished:
                name, update, error = await queue.get()
                if update is not None:
                    lines = merge.add(name, update)
                else:
                    failed = answer_of(name, error) if error is not None else None
                    if failed is not None:
                        errors.append(failed)
                    lines = merge.finish(name, failed[2] if failed else None)
                if stream and lines:
                    if resp is None:
                        resp = await self._start_stream(request, headers)
                    for line in lines:
                        await resp.write(_ndjson(line))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._installed(doc, [b.name for b in targets if b.name not in merge.failures])
        succeeded = [(n, 200, "") for n in (b.name for b in targets) if n not in merge.failures]
        _outcomes(request, [*succeeded, *errors])
        if errors:
            status, message = merge_answers([*succeeded, *errors], action)
            anonymous = merge_answers([*succeeded, *errors], action, names=False)[1]
            if status < 300:  # only 404s beside successes: not for a pull or a create
                status, message = 500, "; ".join(f"{n}: {m}" for n, _, m in errors)
                anonymous = "; ".join(f"{ANY_POD}: {m}" for _, _, m in errors)
            if self.settings.security.hide_pod_names:
                message = anonymous
            if resp is None:
                raise BackendAnswer(status, message, headers=headers)
            await resp.write(_ndjson({"error": message}))
            await resp.write_eof()
            return resp
        if resp is None and not stream:
            return web.json_response({"status": "success"}, headers=headers)
        resp = resp or await self._start_stream(request, headers)
        await resp.write(_ndjson({"status": "success"}))
        await resp.write_eof()
        return resp

    def _installed(self, doc: dict[str, Any], pods: Sequence[str]) -> None:
        """A pull or a create that ended with ``success`` on ``pods``: installed there."""
        name = str(doc.get("model") or doc.get("name") or "")
        if self.witness is None or not name:
            return
        with contextlib.suppress(InvalidModelName):
            key = canonical(name)
            for pod in pods:
                self.witness.pulled(pod, key, name)

    async def _start_stream(
        self, request: web.Request, headers: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "X-Request-ID": request_id(request),
                **headers,
            }
        )
        await resp.prepare(request)
        return resp

    # ------------------------------------------------------------------ blobs
    async def _has_blob(self, request: web.Request) -> web.StreamResponse:
        targets = self._targets(request)
        headers = self._sent_to(request, targets)
        digest = request.match_info["digest"]
        replies = await fan_out(
            self.transport,
            targets,
            "HEAD",
            request.path,
            timeout=self.settings.proxy.connect_timeout,
        )

        def answer(r: PodReply) -> Answer:
            if r.status == 404:
                return r.pod, 404, f'blob "{digest}" not found'
            if r.status >= 400:
                return r.pod, r.status, f"HEAD /api/blobs/{digest}: {r.reason}"
            return reply_answer(r)

        answers = [answer(r) for r in replies]
        statuses = {status for _, status, _ in answers}
        if statuses <= {200, 404}:
            _outcomes(request, answers)
            # Missing on one pod is missing: the client then uploads it, to all of them.
            return web.Response(status=200 if statuses == {200} else 404, headers=headers)
        return self._answer(request, [a for a in answers if a[1] != 404], "blob check", headers)

    async def _create_blob(self, request: web.Request) -> web.StreamResponse:
        targets = self._targets(request)
        headers = self._sent_to(request, targets)
        digest = request.match_info["digest"]
        data = await request.read()  # already read (and size-capped) by the body middleware
        replies = await fan_out(
            self.transport,
            targets,
            "POST",
            f"/api/blobs/{digest}",
            data,
            timeout=BLOB_UPLOAD_SECONDS,
            headers={"Content-Type": "application/octet-stream"},
        )
        return self._answer(request, [reply_answer(r) for r in replies], "blob upload", headers)


def _key(name: str) -> str:
    return canonical(name)


def _outcomes(request: web.Request, answers: Sequence[Answer]) -> None:
    """Each pod's outcome on the request's record (its log line)."""
    request[RECORD].outcomes.update({pod: _outcome(status, msg) for pod, status, msg in answers})


def _outcome(status: int, message: str) -> str:
    if 200 <= status < 300:
        return "done"
    if not status:
        return f"unreachable: {message}"
    return f"answered {status}: {message}" if message else f"answered {status}"


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
