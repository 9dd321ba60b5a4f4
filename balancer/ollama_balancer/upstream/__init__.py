"""Talking to pods: one transport, one response protocol, one error tree.

* :mod:`.transport` — :class:`Transport` (send a request, get a :class:`Response`) and
  its lifecycle;
* :mod:`.errors` — :class:`UpstreamError` and its subclasses, aiohttp's and the
  operating system's errors mapped once;
* :mod:`.http11` — the HTTP/1.1 client the hot path runs on (plain-http POSTs);
* :mod:`.aio` — aiohttp for everything else;
* :mod:`.calls` — whole calls on top: a small answer, a JSON document, a progress stream.
"""

from .errors import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    ErrorAnswer,
    ProtocolError,
    UpstreamError,
    UpstreamTimeout,
    describe,
)
from .transport import Response, Sender, Transport

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "ErrorAnswer",
    "ProtocolError",
    "Response",
    "Sender",
    "Transport",
    "UpstreamError",
    "UpstreamTimeout",
    "describe",
]
