"""Where an Ollama server listens: addresses as ``OLLAMA_HOST`` takes them, and the static
backend list (pure).

Ollama users write bare hosts (``10.0.0.5``, ``gpu-a:8080``) the way Ollama's own
``OLLAMA_HOST`` reads them (``envconfig.Host``): no scheme means ``http``, no port means
Ollama's 11434.  An address written as a URL means what a URL means (``http://h`` is
port 80, ``https://h`` port 443), as it does for ``OLLAMA_HOST``.

One parser for every component: the balancer's ``--backends``, its tests and the demo.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from .backend import Backend
from .quantity import parse_quantity

__all__ = [
    "OLLAMA_PORT",
    "base_url",
    "endpoint_url",
    "host_port",
    "parse_backend",
    "parse_backends",
]

#: Ollama's default port (``OLLAMA_HOST`` without a port).
OLLAMA_PORT = 11434

_SCHEME_PORTS = {"http": 80, "https": 443}


def endpoint_url(host: str, port: int, scheme: str = "http") -> str:
    """``scheme://host:port``, with an IPv6 literal bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def base_url(address: str) -> str:
    """An Ollama address (``host``, ``host:port``, or a URL) as a URL without a trailing slash.

    Raises ``ValueError`` when there is no host, the port is not a number or the scheme
    is neither http nor https.
    """
    text = address.strip()
    explicit = "://" in text
    if not explicit and _is_ipv6(text):
        text = f"[{text}]"  # a bare IPv6 literal, as OLLAMA_HOST accepts it
    parts = urlsplit(text if explicit else "http://" + text)
    if parts.scheme not in _SCHEME_PORTS:
        raise ValueError(f"scheme must be http or https: {address!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {address!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port is not a number in {address!r}") from None
    if parts.netloc.endswith(":"):
        raise ValueError(f"empty port in {address!r}")
    if explicit:
        return text.rstrip("/")
    # A bare address: http, and Ollama's port after the host when none is written.
    rest = text[len(parts.netloc) :].rstrip("/")
    port_text = "" if port is not None else f":{OLLAMA_PORT}"
    url = f"http://{parts.netloc}{port_text}{rest}"
    return url


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def host_port(url: str) -> str:
    """``host:port`` of a URL, the port made explicit (the default name of a backend)."""
    parts = urlsplit(url)
    port = parts.port or _SCHEME_PORTS.get(parts.scheme, OLLAMA_PORT)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _vram(value: str) -> int:
    # 24Gi as Kubernetes writes it; 24GiB / 24GB / 24K as people do.
    text = re.sub(r"([KMGTPE]i?)B$", r"\1", value.strip())
    return parse_quantity(text[:-1] + "k" if text.endswith("K") else text)


def _slots(value: str) -> int:
    slots = int(value)
    if slots < 1:
        raise ValueError("must be >= 1")
    return slots


def parse_backend(item: str, *, default_slots: int = 1) -> Backend:
    """One backend: ``ADDRESS`` or ``NAME=ADDRESS``, then ``;slots=N`` and ``;vram=QUANTITY``.

    ``slots`` is the server's ``OLLAMA_NUM_PARALLEL``; ``vram`` its GPU memory (``24Gi``),
    so routing knows when a cold load would have to evict something.  The name defaults
    to ``host:port``.  Raises ``ValueError`` naming the part that is wrong.
    """
    head, *options = item.strip().split(";")
    name, sep, address = head.partition("=")
    if not sep or "://" in name or "/" in name:
        # "http://x:1/?a=b": the "=" belongs to the URL, not to a name.
        name, address = "", head
    url = base_url(address)
    slots, vram = default_slots, 0
    for option in options:
        key, _, value = (part.strip() for part in option.partition("="))
        try:
            if key == "slots":
                slots = _slots(value)
            elif key == "vram":
                vram = _vram(value)
            else:
                raise ValueError("unknown option (slots, vram)")
        except ValueError as exc:
            raise ValueError(f"{item.strip()!r}: {key}: {exc}") from None
    return Backend(name=name.strip() or host_port(url), url=url, slots=slots, vram_bytes=vram)


def parse_backends(specs: Iterable[str], *, default_slots: int = 1) -> list[Backend]:
    """Backends from items that may each hold several, comma-separated.

    Raises ``ValueError`` on a malformed item or two backends with one name.
    """
    backends = [
        parse_backend(item, default_slots=default_slots)
        for spec in specs
        for item in spec.split(",")
        if item.strip()
    ]
    names = [b.name for b in backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate backend names: {', '.join(duplicates)}")
    return backends
