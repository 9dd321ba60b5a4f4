"""Leader election on a coordination.k8s.io/v1 Lease: the decisions (pure).

One operator replica acts; the others watch the Lease and take it over once its
holder stopped renewing it for ``leaseDurationSeconds``.  As in client-go's
leader election, "stopped renewing" is judged by *this* replica's clock: the
time since it last saw the record change, never a comparison of ``renewTime``
with its own wall clock (clocks of two nodes need not agree).  A holder that
exits cleanly hands the Lease back (no holder), so a standby takes over at once;
after a ``kill -9`` it takes over one lease duration after the last renewal it saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["LeaseRecord", "lease_spec", "may_acquire", "micro_time", "record_of"]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    duration: int
    renew_time: str
    transitions: int
    acquire_time: str = ""
    resource_version: str = ""

    def same_term(self, other: LeaseRecord | None) -> bool:
        """Nothing moved: same holder, same renewal (so no sign of life)."""
        return other is not None and (self.holder, self.renew_time, self.transitions) == (
            other.holder,
            other.renew_time,
            other.transitions,
        )


def record_of(lease: Mapping[str, Any] | None) -> LeaseRecord | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=int(spec.get("leaseDurationSeconds") or 0),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def may_acquire(record: LeaseRecord | None, me: str, unchanged_for: float) -> bool:
    """Whether ``me`` may take the Lease: nobody holds it, ``me`` already does, or its
    holder has shown no sign of life for a whole lease duration (by our clock)."""
    if record is None or not record.holder or record.holder == me:
        return True
    return unchanged_for >= max(record.duration, 1)


def micro_time(now: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    record: LeaseRecord | None, me: str, duration: int, now: datetime, *, release: bool = False
) -> dict[str, Any]:
    """The Lease ``spec`` that renews (or takes, or with ``release`` hands back) it."""
    stamp = micro_time(now)
    taking = record is None or record.holder != me
    transitions = (record.transitions if record else 0) + (1 if taking and record else 0)
    spec: dict[str, Any] = {
        "holderIdentity": None if release else me,
        "leaseDurationSeconds": 1 if release else duration,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    acquired = stamp if taking or release or record is None else record.acquire_time
    if acquired:
        spec["acquireTime"] = acquired
    return spec
