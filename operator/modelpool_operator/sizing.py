"""Model sizes from the registry's manifests, before any download (pure).

Ollama's ``/api/pull`` begins with ``GET <host>/v2/<namespace>/<model>/manifests/<tag>``
(``pullModelManifest``, server/images.go); the manifest lists each layer with its
size, and ``/api/tags`` later reports their sum as the model's size.  The operator
asks the same URL itself, so it knows whether a model can fit anywhere before a
single byte is downloaded.  ``mirrors`` maps a registry host to the base URL to
ask instead (a pull-through cache, an air-gapped mirror, a test registry).

Why not read the pull's own progress instead: its first line with a ``total``
covers only the first layer and arrives as the download starts, so some bytes
are already on the pod by then.  That remains the fallback when the registry
cannot be asked (``Action.max_bytes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ollama_wire import names

__all__ = ["MANIFEST_ACCEPT", "manifest_size", "manifest_url", "parse_mirrors"]

#: What Ollama sends as ``Accept`` for a manifest.
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"


def manifest_url(name: str, mirrors: Mapping[str, str] | None = None) -> str:
    """The manifest URL Ollama would fetch for ``name`` (raises InvalidModelName)."""
    n = names.parse(name)
    base = (mirrors or {}).get(n.host.lower()) or f"https://{n.host}"
    return f"{base.rstrip('/')}/v2/{n.namespace}/{n.model}/manifests/{n.tag}"


def manifest_size(doc: Any) -> int | None:
    """Bytes of every layer plus the config blob; None for anything that is not a manifest."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("layers"), list):
        return None
    blobs = [*doc["layers"], doc.get("config") or {}]
    total = 0
    for blob in blobs:
        size = blob.get("size", 0) if isinstance(blob, Mapping) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return None
        total += size
    return total or None


def parse_mirrors(text: str) -> tuple[tuple[str, str], ...]:
    """``host=url[,host=url...]`` -> ((host, url), ...); hosts lower-cased."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, url = item.partition("=")
        host, url = host.strip().lower(), url.strip()
        if not sep or not host or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"registry mirror {item!r}: expected HOST=URL, e.g. registry.ollama.ai=http://mirror:5000"
            )
        out.append((host, url.rstrip("/")))
    return tuple(out)
