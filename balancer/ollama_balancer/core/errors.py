"""Every answer the balancer gives instead of a backend's, as one exception tree (pure).

The HTTP status is chosen here and nowhere else; :mod:`pipeline` renders an error
once, in the shape the client of the path expects (Ollama's ``{"error": ...}`` on
``/api/*``, OpenAI's on ``/v1/*``, Anthropic's on ``/v1/messages``)::

    BalancerError (status)
     ├── ClientError                      4xx: the request cannot be served as sent
     │    ├── BadRequest            400   invalid JSON, no model, invalid model name
     │    ├── Unauthorized          401   missing or invalid API key
     │    ├── Forbidden             403   key may not call the path / use the model; admin denied
     │    ├── NotFound              404   no pod has the model; unknown pinned backend
     │    ├── RequestTimeout        408   the body did not arrive in time
     │    ├── PayloadTooLarge       413   the body is over the limit
     │    └── TooManyRequests       429   a key's quota (Retry-After)
     ├── ServerError                      5xx: the fleet cannot serve it now
     │    ├── Unavailable           503   no routable pod, every holder down, connection cap,
     │    │                               every attempt failed (Retry-After)
     │    └── GatewayTimeout        504   a backend sent nothing in time
     └── BackendAnswer          (any)     a backend's own error answer, passed on reshaped
    AttemptFailed                         one forwarding attempt failed (the proxy retries or
                                          turns its last one into one of the above)

Routing never picks statuses: it returns :data:`Unroutable` outcomes and
:func:`for_outcome` maps them here.

An error whose message names pods also carries the same message with none named
(``anonymous``): what a balancer set to keep pod names off its answers
(``hide_pod_names``) renders instead.  Logs keep the names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ANY_POD",
    "AttemptFailed",
    "BackendAnswer",
    "BadRequest",
    "BalancerError",
    "ClientError",
    "Forbidden",
    "GatewayTimeout",
    "HoldersDown",
    "NoBackend",
    "NoSuchModel",
    "NotFound",
    "PayloadTooLarge",
    "PinDown",
    "PinUnknown",
    "RequestTimeout",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unroutable",
    "for_outcome",
    "give_up",
]


class BalancerError(Exception):
    """An answer of the balancer's own.  ``close``: drop the connection after answering
    (the client's unread body must not be parsed as its next request); ``anonymous``:
    the message with no pod named, when it names some."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
        native: bool = False,
        anonymous: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.close = close
        #: Ollama's own ``{"error": ...}`` shape on every path: errors Ollama raises before
        #: its OpenAI and Anthropic writers run (an undecodable zstd body).
        self.native = native
        self.anonymous = anonymous

    def public(self, hide_pods: bool) -> str:
        """The message a client gets: without pod names when ``hide_pods``."""
        return self.anonymous if hide_pods and self.anonymous is not None else self.message


class ClientError(BalancerError):
    status = 400


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class RequestTimeout(ClientError):
    status = 408

    def __init__(self, message: str) -> None:
        super().__init__(message, close=True)


class PayloadTooLarge(ClientError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit} bytes", close=True)
        self.limit = limit


class TooManyRequests(ClientError):
    status = 429


class ServerError(BalancerError):
    status = 503


class Unavailable(ServerError):
    status = 503


class GatewayTimeout(ServerError):
    status = 504


class BadGateway(ServerError):
    """A pod's answer broke before the balancer could send any of it (an assembled answer)."""

    status = 502


class BackendAnswer(BalancerError):
    """A backend's own error (e.g. Ollama's 500 when a load fails), with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        anonymous: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, anonymous=anonymous, headers=headers)
        self.status = status


class AttemptFailed(Exception):
    """One attempt on one backend failed before the first byte reached the client.

    ``status`` is the backend's HTTP status, or None when there was no answer;
    ``retry``: the next-ranked backend may be tried; ``fast``: it failed quickly
    (broken rather than busy) and earns a cool-down; ``timeout``: nothing arrived.
    """

    def __init__(
        self,
        backend: str,
        message: str,
        *,
        status: int | None = None,
        retry: bool = True,
        fast: bool = False,
        timeout: bool = False,
        answer: str = "",
    ) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.message = message
        self.status = status
        self.retry = retry
        self.fast = fast
        self.timeout = timeout
        self.answer = answer  # the backend's own error message, if it sent one


# ------------------------------------------------------------------ routing outcomes
@dataclass(frozen=True, slots=True)
class NoSuchModel:
    """No pod has the model installed, resident or loading."""

    model: str


@dataclass(frozen=True, slots=True)
class HoldersDown:
    """Every pod that holds the model is down."""

    model: str
    down: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoBackend:
    """No pod is routable at all."""


@dataclass(frozen=True, slots=True)
class PinUnknown:
    """The request pinned a backend the fleet does not know."""

    pin: str
    known: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PinDown:
    """The request pinned a backend that is not routable now."""

    pin: str


Unroutable = NoSuchModel | HoldersDown | NoBackend | PinUnknown | PinDown

#: Seconds a client is told to wait when the fleet (or a part of it) is down.
RETRY_DOWN = 5
#: What an anonymous message says instead of a pod's name.
ANY_POD = "a pod"


def for_outcome(outcome: Unroutable) -> BalancerError:
    """The answer for a request routing could not place."""
    match outcome:
        case NoSuchModel(model):
            return NotFound(f"model '{model}' not found")
        case HoldersDown(model, down):
            unavailable = f"model '{model}' is unavailable: every pod holding it is down"
            return Unavailable(
                f"{unavailable} ({', '.join(sorted(down))})",
                retry_after=RETRY_DOWN,
                anonymous=unavailable,
            )
        case NoBackend():
            return Unavailable("no Ollama backend is available", retry_after=RETRY_DOWN)
        case PinUnknown(pin, known):
            names = ", ".join(known) or "none"
            unknown = f"backend '{pin}' is not in the fleet"
            return NotFound(f"{unknown} (known: {names})", anonymous=unknown)
        case PinDown(pin):
            return Unavailable(f"backend '{pin}' is not available", retry_after=RETRY_DOWN)
    raise AssertionError(outcome)  # pragma: no cover - the match is exhaustive


def give_up(model: str, failures: list[AttemptFailed]) -> BalancerError:
    """The answer after every attempt failed (``failures`` in the order tried)."""
    if not failures:
        return Unavailable("no Ollama backend is available", retry_after=RETRY_DOWN)
    last = failures[-1]
    if last.answer and last.status is not None and last.status != 503 and last.status < 600:
        # The backend's own answer (e.g. a 500 load failure), reshaped for the client's API.
        return BackendAnswer(last.status, last.answer)
    tried = "; ".join(str(f) for f in failures)
    message = f"all backends failed for model '{model}': {tried}"
    anonymous = f"all backends failed for model '{model}': " + "; ".join(
        f"{ANY_POD}: {f.message}" for f in failures
    )
    if last.timeout:
        return GatewayTimeout(message, retry_after=RETRY_DOWN, anonymous=anonymous)
    return Unavailable(message, retry_after=RETRY_DOWN, anonymous=anonymous)
