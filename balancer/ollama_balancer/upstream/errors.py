"""What can go wrong talking to a pod: one exception tree, whichever client did the talking.

::

    UpstreamError               a pod failed us (``str()`` says how, without the class name)
     ├── ConnectError           the request never reached the pod: refused, unreachable, DNS, TLS
     │    └── ConnectTimeout    no connection within the connect timeout
     ├── UpstreamTimeout        connected, then no answer (or no next chunk) in time
     ├── Disconnected           the connection ended before the answer was complete
     ├── ProtocolError          the bytes are not an HTTP/1.1 answer, or not the JSON asked for
     └── ErrorAnswer            the pod answered with an error: a status >= 400, or an
                                ``{"error": ...}`` line inside a progress stream that began 200

The transport raises the first four: the HTTP/1.1 client raises them itself, and
:func:`upstream_error` maps what aiohttp and the operating system raise, once, at the
transport's edge.  :class:`ErrorAnswer` comes from the whole-answer calls
(:mod:`.calls`); the proxy reads a relayed answer's status itself, since it passes the
pod's own error on.  The tree is drawn for the retry decision: only a
:class:`ConnectError` proves the pod never saw the request.
"""

from __future__ import annotations

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "ErrorAnswer",
    "ProtocolError",
    "UpstreamError",
    "UpstreamTimeout",
    "describe",
    "upstream_error",
]


class UpstreamError(Exception):
    """A pod failed us: no connection, no answer in time, a cut or malformed answer."""


class ConnectError(UpstreamError):
    """No connection: refused, unreachable, DNS failure, TLS handshake (nothing was sent)."""


class ConnectTimeout(ConnectError):
    """No connection within the connect timeout."""


class UpstreamTimeout(UpstreamError):
    """Connected, then the pod kept silent longer than the caller allowed."""


class Disconnected(UpstreamError):
    """The connection closed or was reset before the answer was complete."""


class ProtocolError(UpstreamError):
    """The pod's bytes are not a valid HTTP/1.1 answer, or not the JSON the call expects."""


class ErrorAnswer(UpstreamError):
    """The pod answered with an error: HTTP ``status`` >= 400 with Ollama's message, or
    (``status`` 200) an ``{"error": ...}`` line inside a progress stream."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status >= 400 else message)
        self.status = status
        self.message = message

    @property
    def in_stream(self) -> bool:
        """The error came as a line of a stream whose status was a success."""
        return self.status < 400


def describe(exc: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty), for logs and answers."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def upstream_error(exc: BaseException) -> UpstreamError:
    """The tree's member for what aiohttp or the operating system raised talking to a pod.

    The order matters: aiohttp's connect timeout is also a :class:`TimeoutError`, and its
    connector errors are also :class:`OSError`.
    """
    if isinstance(exc, UpstreamError):
        return exc
    text = str(exc) or type(exc).__name__  # the original stays chained as __cause__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(text)
    if isinstance(
        exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL | aiohttp.ServerFingerprintMismatch
    ):
        return ConnectError(text)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(text)
    if isinstance(exc, HttpProcessingError | aiohttp.ClientResponseError):
        return ProtocolError(text)
    return Disconnected(text)  # reset, closed, a cut payload: the answer did not arrive whole
