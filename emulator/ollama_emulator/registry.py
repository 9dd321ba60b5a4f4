"""Models on a node's disk, and pulls from the emulated registry (the catalogue).

Layout of a pulled model, as the registry's manifest lists it (:func:`manifest`):
one big weights blob plus small template, license and params layers and a
config blob, with digests derived from the manifest digest so every node sees
the same blobs; their sizes add up to the model's ``size_bytes`` (what
``/api/tags`` reports).  Like Ollama's ``PullModel`` a pull reads the manifest
first and downloads the layers in manifest order, the config last.  A download
advances at the node's ``pull_bandwidth``; pulls of the same blob share one
download; when the last waiter leaves, the download stops and keeps its partial
bytes (a later pull resumes), like ``server/download.go``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from ollama_wire import names

from .catalogue import Catalogue, ModelSpec
from .clock import Clock
from .stats import Stats

__all__ = [
    "MANIFEST_MEDIA_TYPE",
    "UNAUTHORIZED",
    "Library",
    "LibraryEntry",
    "PullError",
    "Puller",
    "layers",
    "manifest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_SMALL_LAYERS = (("template", 1429), ("license", 7711), ("params", 96))
_CONFIG_SIZE = 485
#: What Ollama's ``makeRequestWithRetry`` gives after a second 401 (server/images.go).
UNAUTHORIZED = "unauthorized: access denied"


def layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """``(sha256:<hex>, bytes)`` of every blob of ``spec`` in download order: the
    manifest's layers (weights first), then its config blob."""
    small = sum(size for _, size in _SMALL_LAYERS) + _CONFIG_SIZE
    out = [(_blob(spec, "model"), max(1, spec.size_bytes - small))]
    out += [(_blob(spec, kind), size) for kind, size in _SMALL_LAYERS]
    out.append((_blob(spec, "config"), _CONFIG_SIZE))
    return out


def manifest(spec: ModelSpec) -> dict[str, Any]:
    """The registry's manifest of ``spec`` (``GET /v2/<ns>/<model>/manifests/<tag>``).

    The shape of the Ollama registry's answers (Docker distribution schema 2): the
    layer sizes are what a client can learn about a model before downloading it.
    """
    blobs = layers(spec)
    kinds = ("model", *(kind for kind, _ in _SMALL_LAYERS))
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": _CONFIG_MEDIA_TYPE, "digest": blobs[-1][0], "size": blobs[-1][1]},
        "layers": [
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest, "size": size}
            for kind, (digest, size) in zip(kinds, blobs[:-1], strict=True)
        ],
    }


def _blob(spec: ModelSpec, kind: str) -> str:
    return "sha256:" + hashlib.sha256(f"{spec.digest}:{kind}".encode()).hexdigest()


@dataclass
class LibraryEntry:
    """A model on the emulated node's disk (what ``/api/tags`` is rendered from; the wire
    record itself is the kernel's :class:`ollama_wire.models.InstalledModel`)."""

    name: names.ModelName
    spec: ModelSpec
    modified_ns: int

    @property
    def display(self) -> str:
        return self.name.shortest


class Library:
    """The node's models on disk (``/api/tags``), keyed by Ollama's case-insensitive name."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._models: dict[str, LibraryEntry] = {}

    def find(self, name: str) -> LibraryEntry | None:
        try:
            return self._models.get(names.canonical(name))
        except names.InvalidModelName:
            return None

    def install(self, name: str, spec: ModelSpec) -> LibraryEntry:
        parsed = names.parse(name)
        existing = self._models.get(parsed.canonical)
        model = LibraryEntry(existing.name if existing else parsed, spec, self._clock.wall_ns())
        self._models[parsed.canonical] = model
        return model

    def remove(self, name: str) -> bool:
        model = self.find(name)
        if model is None:
            return False
        del self._models[model.name.canonical]
        return True

    def models(self) -> list[LibraryEntry]:
        """Newest ``modified_at`` first, as ``/api/tags`` sorts."""
        return sorted(self._models.values(), key=lambda m: m.modified_ns, reverse=True)


class PullError(Exception):
    """A pull failed after streaming started (Ollama sends it as an in-stream ``error``)."""


class _Download:
    def __init__(self, digest: str, total: int) -> None:
        self.digest = digest
        self.total = total
        self.waiters = 0
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Puller:
    """One node's blob store and downloads."""

    def __init__(
        self,
        catalogue: Catalogue,
        library: Library,
        clock: Clock,
        stats: Stats,
        bandwidth: float,
        progress_interval: float,
    ) -> None:
        self.catalogue = catalogue
        self.library = library
        self.clock = clock
        self.stats = stats
        self.bandwidth = bandwidth
        self.progress_interval = progress_interval
        """Real seconds between progress lines (Ollama: about 60 ms)."""
        self.blobs: dict[str, float] = {}
        """Bytes on disk per blob digest (partial while downloading)."""
        self.heads: dict[str, bytes] = {}
        """First bytes of uploaded blobs (``/api/blobs``): enough to tell a GGUF file."""
        self._downloads: dict[str, _Download] = {}
        self._totals: dict[str, int] = {}
        """Full size of every blob a download was started for (partial ones do not count)."""

    def has_blob(self, digest: str) -> bool:
        """A complete blob on disk (pulled, or uploaded to ``/api/blobs``)."""
        size = self.blobs.get(digest)
        return size is not None and size >= self._totals.get(digest, size)

    def store_blob(self, digest: str, size: int, head: bytes) -> None:
        self.blobs[digest] = size
        self.heads[digest] = head

    def mark_installed(self, spec: ModelSpec) -> None:
        for digest, size in layers(spec):
            self.blobs[digest] = size

    async def close(self) -> None:
        for download in list(self._downloads.values()):
            if download.task is not None:
                download.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await download.task

    async def pull(self, name: str) -> AsyncGenerator[dict[str, Any], None]:
        """Progress objects of ``/api/pull``, ending with ``{"status": "success"}``."""
        self.stats.pulls_started += 1
        yield {"status": "pulling manifest"}
        spec = self.catalogue.find(name)
        if spec is None:  # the registry's 404 is os.ErrNotExist in Ollama
            raise PullError("pull model manifest: file does not exist")
        if spec.private:  # 401 twice: the node's key is not allowed to pull it
            raise PullError(f"pull model manifest: {UNAUTHORIZED}")
        for digest, total in layers(spec):
            status = f"pulling {digest[7:19]}"
            async for completed in self._fetch(digest, total):
                line: dict[str, Any] = {"status": status, "digest": digest, "total": total}
                if completed:
                    line["completed"] = completed
                yield line
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        self.library.install(name, spec)
        self.stats.pulls_completed += 1
        yield {"status": "success"}

    async def _fetch(self, digest: str, total: int) -> AsyncIterator[int]:
        if self.blobs.get(digest, 0) >= total:
            yield total
            return
        download = self._downloads.get(digest)
        if download is None:
            download = self._downloads[digest] = _Download(digest, total)
            self._totals[digest] = total
            download.task = asyncio.create_task(self._download(download))
            self.stats.downloads_started += 1
        download.waiters += 1
        try:
            while not download.done.is_set():
                yield int(self.blobs.get(digest, 0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(download.done.wait(), self.progress_interval)
            yield total
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not download.done.is_set() and download.task:
                # Last client gone: stop, keep the partial blob for a later resume.
                download.task.cancel()
                self._downloads.pop(digest, None)

    async def _download(self, download: _Download) -> None:
        step = 0.05  # emulated seconds per progress tick
        while self.blobs.get(download.digest, 0) < download.total:
            await self.clock.sleep(step)
            have = self.blobs.get(download.digest, 0) + self.bandwidth * step
            self.blobs[download.digest] = min(float(download.total), have)
        self._downloads.pop(download.digest, None)
        download.done.set()
