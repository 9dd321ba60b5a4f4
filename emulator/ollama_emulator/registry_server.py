"""The emulated model registry over HTTP: manifests, as Ollama's registry serves them.

Ollama's ``/api/pull`` starts with ``GET <host>/v2/<namespace>/<model>/manifests/<tag>``
(``pullModelManifest`` in server/images.go, ``Accept:
application/vnd.docker.distribution.manifest.v2+json``); the manifest lists every
layer with its size, so anyone can learn how big a model is before downloading it.
This server answers those requests from the fleet's catalogue with the same
manifest the emulated nodes download (:func:`.registry.manifest`):

- a known model: 200, the manifest, ``Docker-Content-Digest: sha256:<manifest digest>``;
- an unknown one: 404 ``{"errors":[{"code":"MANIFEST_UNKNOWN",...}]}`` (Ollama turns
  any 404 into ``file does not exist``);
- a ``private`` one: 401 with a ``WWW-Authenticate: Bearer`` challenge, as for a
  model the caller's key may not pull.

Blobs are not served: the emulated nodes download in-process at their configured
bandwidth.  ``requests`` counts what was asked, by path.
"""

from __future__ import annotations

import json
from collections import Counter

from aiohttp import web

from ollama_wire import names

from .catalogue import Catalogue
from .registry import MANIFEST_MEDIA_TYPE, manifest

__all__ = ["EmulatedRegistry"]

_REGISTRY: web.AppKey[EmulatedRegistry] = web.AppKey("registry")


def _errors(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers=headers)


async def _version(request: web.Request) -> web.Response:
    # The Docker distribution API's "is this a v2 registry" probe.
    return web.json_response({})


async def _manifest(request: web.Request) -> web.Response:
    reg = request.app[_REGISTRY]
    reg.requests[request.path] += 1
    ns, model, tag = (request.match_info[k] for k in ("namespace", "model", "tag"))
    try:
        name = names.parse(f"{reg.host}/{ns}/{model}:{tag}")
    except names.InvalidModelName:
        return _errors(400, "NAME_INVALID", "invalid repository name")
    spec = reg.catalogue.find(name.canonical)
    if spec is None:
        return _errors(404, "MANIFEST_UNKNOWN", "manifest unknown")
    if spec.private:
        challenge = (
            f'Bearer realm="{reg.url}/token",service="{reg.host}",'
            f'scope="repository:{ns}/{model}:pull"'
        )
        return _errors(401, "UNAUTHORIZED", "authentication required", **{
            "WWW-Authenticate": challenge
        })  # fmt: skip
    body = json.dumps(manifest(spec), separators=(",", ":")).encode()
    return web.Response(
        body=body,
        headers={
            "Content-Type": MANIFEST_MEDIA_TYPE,
            "Docker-Content-Digest": f"sha256:{spec.digest}",
        },
    )


class EmulatedRegistry:
    """``registry.ollama.ai`` (or ``host``) on a loopback address."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        host: str = names.DEFAULT_HOST,
        bind: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.catalogue = catalogue
        self.host = host
        """The registry host this server stands in for (names carry it)."""
        self.bind = bind
        self.port = port
        self.requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app[_REGISTRY] = self
        app.router.add_get("/v2/", _version)
        app.router.add_get("/v2/{namespace}/{model}/manifests/{tag}", _manifest)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.01)
        await runner.setup()
        site = web.TCPSite(runner, self.bind, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
