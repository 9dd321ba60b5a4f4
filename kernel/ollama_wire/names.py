"""Ollama model names: parsing, validation and normalisation (pure).

Mirrors ``types/model/name.go`` of Ollama (see docs/ollama.md §3)::

    [host/][namespace/]model[:tag]

Defaults are host ``registry.ollama.ai``, namespace ``library``, tag ``latest``.
Equality is case-insensitive per part, so the canonical key used everywhere in
ollama-fleet (routing tables, fleet snapshots, operator plans) is the lower-cased
fully-qualified name.  ``@digest`` is not parsed, exactly like Ollama.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "InvalidModelName",
    "ModelName",
    "canonical",
    "display",
    "parse",
    "strip_gateway_prefix",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


class InvalidModelName(ValueError):
    """The string is not a valid Ollama model name (Ollama answers 400 ``invalid model name``)."""


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def canonical(self) -> str:
        """Case-folded fully-qualified name: the identity Ollama compares with ``EqualFold``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def shortest(self) -> str:
        """Ollama's ``DisplayShortest``: what ``/api/tags`` and ``/api/ps`` print."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse(name: str) -> ModelName:
    """Parse and validate ``name``, filling Ollama's defaults.

    Raises :class:`InvalidModelName` for anything Ollama would reject with 400.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidModelName(f"invalid model name {name!r}")
    rest = name
    tag = ""
    # "/" cannot occur in a tag, so a ":" after the last "/" starts the tag
    # (a ":" before it belongs to a host with a port).
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
        if not tag:
            raise InvalidModelName(f"invalid model name {name!r}")
    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace, model = "", "", parts[0]
    elif len(parts) == 2:
        host, namespace, model = "", parts[0], parts[1]
    elif len(parts) == 3:
        host, namespace, model = parts
        if "://" in host:
            raise InvalidModelName(f"invalid model name {name!r}")
    else:
        raise InvalidModelName(f"invalid model name {name!r}")
    if (
        (host and not _HOST.fullmatch(host))
        or (namespace and not _NAMESPACE.fullmatch(namespace))
        or not _PART.fullmatch(model)
        or (tag and not _PART.fullmatch(tag))
        or any(part == "" for part in parts)
    ):
        raise InvalidModelName(f"invalid model name {name!r}")
    return ModelName(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=model,
        tag=tag or DEFAULT_TAG,
    )


def canonical(name: str) -> str:
    """Canonical key of ``name`` (raises :class:`InvalidModelName`)."""
    return _canonical(name) if isinstance(name, str) else parse(name).canonical


def display(name: str) -> str:
    """``DisplayShortest`` of ``name`` (raises :class:`InvalidModelName`)."""
    return _display(name) if isinstance(name, str) else parse(name).shortest


# Every request names a model and the same few names recur: parse each once.  Bounded,
# so names clients make up cannot grow it; invalid names raise and are never cached.
@lru_cache(maxsize=4096)
def _canonical(name: str) -> str:
    return parse(name).canonical


@lru_cache(maxsize=4096)
def _display(name: str) -> str:
    return parse(name).shortest


_GATEWAY_PREFIXES = ("ollama/", "ollama:", "ollama_chat/")


def strip_gateway_prefix(name: str) -> str | None:
    """Return ``name`` without a gateway prefix (``ollama/llama3``, ``ollama:llama3``), or None.

    LiteLLM, Open WebUI connectors and other gateways prefix the provider; a
    caller should try the name as sent first (``ollama/x`` is also a valid
    namespaced Ollama name) and fall back to this.
    """
    for prefix in _GATEWAY_PREFIXES:
        if name.lower().startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return None
