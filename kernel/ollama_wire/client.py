"""A thin async client for one Ollama server's HTTP API (the "wire client").

Shared by the balancer's poller and admin fan-out and the operator's executor.  It
owns no session: callers pass the process-wide :class:`aiohttp.ClientSession`.
What can go wrong talking to one server::

    OllamaError                 anything that went wrong talking to one Ollama server
     ├── OllamaUnreachable      no HTTP answer at all: refused, reset, DNS failure, timeout
     ├── OllamaProtocolError    an answer that is not Ollama's protocol (e.g. not JSON)
     ├── OllamaStatusError      Ollama answered with an HTTP error status (``status``)
     └── OllamaStreamError      an ``{"error": ...}`` line inside a stream that began 200
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "OllamaClient",
    "OllamaError",
    "OllamaProtocolError",
    "OllamaStatusError",
    "OllamaStreamError",
    "OllamaUnreachable",
]


class OllamaError(Exception):
    """Anything that went wrong talking to one Ollama server (``message`` says what)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OllamaUnreachable(OllamaError):
    """No HTTP answer at all: refused, reset, DNS failure or timeout."""


class OllamaProtocolError(OllamaError):
    """An answer that does not follow Ollama's protocol (malformed JSON, a cut stream)."""


class OllamaStatusError(OllamaError):
    """Ollama answered with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class OllamaStreamError(OllamaError):
    """An ``{"error": ...}`` line in a stream that had begun with 200 (e.g. a failed pull)."""


def _message(body: bytes) -> str:
    # Ollama answers JSON errors, except plain-text 404/405 for unknown routes
    # and empty 403s from its Host/CORS guard.
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return body.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class OllamaClient:
    """Client for the Ollama server at ``base_url`` (e.g. ``http://10.0.0.7:11434``)."""

    session: aiohttp.ClientSession
    base_url: str
    timeout: float = 5.0

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    async def _json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        t = aiohttp.ClientTimeout(total=timeout if timeout is not None else self.timeout)
        try:
            async with self.session.request(method, self._url(path), json=body, timeout=t) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise OllamaStatusError(resp.status, _message(raw))
                return json.loads(raw) if raw.strip() else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OllamaUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # malformed JSON from the server
            raise OllamaProtocolError(f"invalid JSON from {self.base_url}{path}: {exc}") from exc

    async def version(self) -> str:
        doc = await self._json("GET", "/api/version")
        return str(doc.get("version", "")) if isinstance(doc, dict) else ""

    async def tags(self) -> list[dict[str, Any]]:
        """``/api/tags`` models (installed on disk)."""
        doc = await self._json("GET", "/api/tags")
        return list((doc or {}).get("models") or [])

    async def ps(self) -> list[dict[str, Any]]:
        """``/api/ps`` models (resident in memory)."""
        doc = await self._json("GET", "/api/ps")
        return list((doc or {}).get("models") or [])

    async def progress(
        self, path: str, body: Mapping[str, Any], *, idle_timeout: float = 300.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a progress endpoint (``/api/pull``, ``/api/create``) to the end.

        An error before the stream is raised with its status (:class:`OllamaStatusError`);
        an in-stream ``{"error": ...}`` line as :class:`OllamaStreamError`.
        """
        t = aiohttp.ClientTimeout(total=None, sock_read=idle_timeout, sock_connect=self.timeout)
        try:
            async with self.session.post(
                self._url(path), json={**body, "stream": True}, timeout=t
            ) as resp:
                if resp.status >= 400:
                    raise OllamaStatusError(resp.status, _message(await resp.read()))
                async for line in resp.content:
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError as exc:
                        raise OllamaProtocolError(
                            f"invalid progress line from {self.base_url}{path}: {exc}"
                        ) from exc
                    if isinstance(doc, dict) and "error" in doc:
                        raise OllamaStreamError(str(doc["error"]))
                    yield doc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OllamaUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # aiohttp: a line longer than its buffer
            raise OllamaProtocolError(
                f"unreadable stream from {self.base_url}{path}: {exc}"
            ) from exc

    def pull(self, model: str, *, idle_timeout: float = 300.0) -> AsyncIterator[dict[str, Any]]:
        """Stream ``/api/pull`` progress objects to the end; raise on an error line."""
        return self.progress("/api/pull", {"model": model}, idle_timeout=idle_timeout)

    async def load(
        self,
        model: str,
        *,
        keep_alive: str | float | None = None,
        options: Mapping[str, Any] | None = None,
        embedding: bool = False,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Load ``model`` without generating (empty prompt), optionally pinning it.

        Completion models are loaded with ``/api/generate``; embedding models
        with ``/api/embed`` (they lack the ``completion`` capability).
        """
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if options:
            body["options"] = dict(options)
        if embedding:
            return dict(await self._json("POST", "/api/embed", body, timeout=timeout) or {})
        body["stream"] = False
        return dict(await self._json("POST", "/api/generate", body, timeout=timeout) or {})

    async def unload(self, model: str, *, embedding: bool = False) -> None:
        """Ask Ollama to unload ``model`` once idle (``keep_alive: 0``)."""
        if embedding:
            await self._json("POST", "/api/embed", {"model": model, "keep_alive": 0})
        else:
            await self._json(
                "POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False}
            )

    async def delete(self, model: str) -> None:
        await self._json("DELETE", "/api/delete", {"model": model})

    async def copy(self, source: str, destination: str) -> None:
        await self._json("POST", "/api/copy", {"source": source, "destination": destination})

    async def has_blob(self, digest: str) -> bool:
        """``HEAD /api/blobs/<digest>``: 200 is True, 404 False, anything else an error."""
        t = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self.session.head(self._url(f"/api/blobs/{digest}"), timeout=t) as resp:
                if resp.status == 404:
                    return False
                if resp.status >= 400:
                    raise OllamaStatusError(resp.status, f"HEAD /api/blobs/{digest}: {resp.reason}")
                return True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OllamaUnreachable(f"{type(exc).__name__}: {exc}") from exc

    async def create_blob(self, digest: str, data: bytes, *, timeout: float = 600.0) -> int:
        """``POST /api/blobs/<digest>``: 201 when stored, 200 when it was already there."""
        t = aiohttp.ClientTimeout(total=timeout, sock_connect=self.timeout)
        try:
            async with self.session.post(
                self._url(f"/api/blobs/{digest}"), data=data, timeout=t
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise OllamaStatusError(resp.status, _message(raw))
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OllamaUnreachable(f"{type(exc).__name__}: {exc}") from exc
