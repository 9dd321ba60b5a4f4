"""Values that cross the shared-state interface (pure: no I/O).

A **lease** is one request's claim on one of a pod's parallel slots for one
model, fleet-wide.  It is named by a *member* string unique in the fleet
(``<replica>/<request id>/<attempt>``), so a replica can renew, release or
re-register exactly its own leases.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from dataclasses import dataclass

__all__ = [
    "Grant",
    "Learned",
    "Lease",
    "LeaseKey",
    "QuotaTicket",
    "QuotaVerdict",
    "SlotFreed",
    "field_of",
    "key_of_field",
    "new_replica_id",
]

LeaseKey = tuple[str, str]  # (pod, canonical model)

#: Separates pod and model inside one Redis field; Ollama model names never hold it.
SEP = "|"


def field_of(pod: str, model: str) -> str:
    return f"{pod}{SEP}{model}"


def key_of_field(field: str) -> LeaseKey:
    pod, _, model = field.rpartition(SEP)
    return (pod, model)


def new_replica_id() -> str:
    """Unique per process start: host (the pod name in Kubernetes), pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


_attempts = itertools.count(1)


def member_of(replica: str, request_id: str) -> str:
    # The counter keeps two attempts of one request (failover) apart.
    return f"{replica}/{request_id}/{next(_attempts)}"


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot held (or, with ``overflow``, one request queued) at ``pod`` for ``model``."""

    pod: str
    model: str
    member: str
    slots: int
    request_id: str
    #: This request started the pod's load of the model (it was cold): first byte ends it.
    loads: bool = False
    #: Registered in the shared store; False while local state serves (store down).
    shared: bool = False

    @property
    def key(self) -> LeaseKey:
        return (self.pod, self.model)


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to an acquire: a lease, or None when the pod's slots are all held."""

    lease: Lease | None
    #: Requests in flight at the pod for the model, fleet-wide, after this call.
    held: int


@dataclass(frozen=True, slots=True)
class SlotFreed:
    """A slot of ``model`` on ``pod`` was released (or reclaimed from a dead replica).

    ``slots`` is the pod's slot count as the releaser knew it (0 when unknown, for
    leases reclaimed by expiry); ``held`` what is still in flight after the release.
    """

    pod: str
    model: str
    held: int
    slots: int
    reclaimed: bool = False

    @property
    def free(self) -> bool:
        return self.slots == 0 or self.held < self.slots


@dataclass(frozen=True, slots=True)
class Learned:
    """What a finished request taught about its model (seconds; None = nothing)."""

    load_seconds: float | None = None
    service_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class QuotaTicket:
    """An admitted request of an API key; give it back with :meth:`finish_quota`."""

    key: str  # the key's name (never the key)
    member: str
    tokens_per_minute: int
    shared: bool = False


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    """Admitted (``ticket``), or refused with the client's message and Retry-After."""

    ticket: QuotaTicket | None
    reason: str = ""
    retry_after: int = 0

    @property
    def admitted(self) -> bool:
        return self.ticket is not None
