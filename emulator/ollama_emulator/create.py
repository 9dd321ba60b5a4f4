"""``/api/blobs/:digest`` and ``/api/create`` (docs/ollama.md §2.1, §2.4).

How ``ollama create`` makes a model: ``HEAD /api/blobs/<digest>`` for each file
(404: upload it with ``POST``), then ``POST /api/create`` naming the files by
digest, or ``from`` an existing model.  ``/api/create`` streams progress
objects; an error before the first one keeps its status, a later one is an
in-stream ``{"error": ...}`` line (``streamResponse`` in ``server/routes.go``).

The emulator's model files: a blob whose name ends in ``.gguf`` or whose bytes
start with ``GGUF`` is a model; the model created from it has the blobs' total
size and a digest derived from the blob digests, so the same upload makes the
same model on every node.  ``from`` a model that is not on disk pulls it first,
as Ollama does.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from ollama_wire import names

from .catalogue import ModelSpec
from .keys import NODE
from .registry import PullError, layers
from .streams import ApiError, ChunkStream, json_response, read_json
from .wire import go_json

__all__ = ["routes"]

routes = web.RouteTableDef()
NDJSON = "application/x-ndjson"
_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_GGUF_MAGIC = b"GGUF"


def _digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not _DIGEST.match(digest):
        raise ApiError(400, "invalid digest format")
    return digest


@routes.head("/api/blobs/{digest}")
async def head_blob(request: web.Request) -> web.Response:
    digest = _digest(request)
    if not request.app[NODE].puller.has_blob(digest.replace("-", ":", 1)):
        raise ApiError(404, f'blob "{digest}" not found')
    return web.Response(status=200)


@routes.post("/api/blobs/{digest}")
async def create_blob(request: web.Request) -> web.Response:
    digest = _digest(request)
    puller = request.app[NODE].puller
    if puller.has_blob(digest.replace("-", ":", 1)):
        return web.Response(status=200)  # the body is not even read
    sha, size, head = hashlib.sha256(), 0, b""
    async for chunk in request.content.iter_chunked(1 << 16):
        sha.update(chunk)
        if len(head) < 4:
            head += chunk[: 4 - len(head)]
        size += len(chunk)
    got = "sha256:" + sha.hexdigest()
    if got != digest:
        raise ApiError(400, f'digest mismatch, expected "{digest}", got "{got}"')
    puller.store_blob(digest, size, head)
    return web.Response(status=201)


class _CreateError(Exception):
    """A failure of the create goroutine: ``status`` before the first line, 500 after."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def _from_model(
    request: web.Request, source: str
) -> AsyncGenerator[dict[str, Any] | ModelSpec, None]:
    """Progress of taking ``source``'s layers (pulled first when missing), then its spec."""
    node = request.app[NODE]
    try:
        names.parse(source)
    except names.InvalidModelName:
        raise _CreateError("invalid model name", 400) from None
    model = node.library.find(source)
    if model is None:
        progress = node.puller.pull(source)
        async with contextlib.aclosing(progress):
            try:
                async for line in progress:
                    if line.get("status") != "success":
                        yield line
            except PullError as exc:
                raise _CreateError(str(exc)) from None
        model = node.library.find(source)
        assert model is not None
    for digest, _ in layers(model.spec):
        yield {"status": f"using existing layer {digest}"}
    yield model.spec


async def _from_files(
    request: web.Request, name: str, files: dict[str, Any]
) -> AsyncGenerator[dict[str, Any] | ModelSpec, None]:
    puller = request.app[NODE].puller
    digests = []
    gguf = False
    for filename, digest in files.items():
        digest = str(digest)
        if not puller.has_blob(digest):
            raise _CreateError(f"open blobs/{digest.replace(':', '-')}: no such file or directory")
        digests.append(digest)
        gguf = gguf or filename.endswith(".gguf") or puller.heads.get(digest) == _GGUF_MAGIC
    if not digests:
        raise _CreateError("no files provided", 400)
    if not gguf:
        raise _CreateError("unknown type", 400)
    yield {"status": "parsing GGUF"}
    for digest in digests:
        yield {"status": f"using existing layer {digest}"}
    manifest = hashlib.sha256(("manifest:" + ",".join(sorted(digests))).encode()).hexdigest()
    size = int(sum(puller.blobs[d] for d in digests))
    yield ModelSpec(name=name, size_bytes=size, digest=manifest)


async def _create(
    request: web.Request, doc: dict[str, Any]
) -> AsyncGenerator[dict[str, Any], None]:
    node = request.app[NODE]
    name = str(doc.get("model") or doc.get("name") or "")
    try:
        names.parse(name)
    except names.InvalidModelName:
        raise _CreateError("invalid model name", 400) from None
    source, files = doc.get("from"), doc.get("files")
    if source:
        steps = _from_model(request, str(source))
    elif isinstance(files, dict):
        steps = _from_files(request, name, files)
    else:
        raise _CreateError("neither 'from' or 'files' was specified", 400)
    spec: ModelSpec | None = None
    async with contextlib.aclosing(steps):
        async for step in steps:
            if isinstance(step, ModelSpec):
                spec = step
            else:
                yield step
    assert spec is not None
    yield {"status": "writing manifest"}
    node.library.install(name, spec)
    node.puller.mark_installed(spec)
    yield {"status": "success"}


@routes.post("/api/create")
async def create(request: web.Request) -> web.StreamResponse:
    doc = await read_json(request, "api.CreateRequest")
    progress = _create(request, doc)
    async with contextlib.aclosing(progress):
        if doc.get("stream") is False:
            last: dict[str, Any] = {}
            try:
                async for line in progress:
                    last = line
            except _CreateError as exc:
                raise ApiError(exc.status, exc.message) from None
            return json_response(last)
        out = ChunkStream(request, NDJSON)
        try:
            async for line in progress:
                await out.write(go_json(line) + b"\n")
        except _CreateError as exc:
            if out.response is None:
                raise ApiError(exc.status, exc.message) from None
            await out.write(go_json({"error": exc.message}) + b"\n")
        return await out.finish()
