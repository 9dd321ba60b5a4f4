"""Kubernetes Events, aggregated the way Kubernetes' own recorder does (pure).

The same report about the same object (type, reason, message, reporting
instance) is one core/v1 Event whose ``count`` and ``lastTimestamp`` move, not a
new Event each time: ``kubectl describe`` then shows ``(x7 over 3m)`` instead of
seven lines.  The Event's name is derived from that identity, so a restarted
operator finds and bumps the same Event instead of posting a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["EventKey", "bump_patch", "event_body", "event_key", "timestamp"]

#: The API server caps Event messages at 1 KiB.
MESSAGE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EventKey:
    namespace: str
    name: str  # the involved object's
    uid: str
    type: str  # Normal | Warning
    reason: str
    message: str
    instance: str  # reportingInstance: which operator replica said it

    @property
    def event_name(self) -> str:
        digest = hashlib.sha256(
            "\0".join((self.uid, self.type, self.reason, self.message, self.instance)).encode()
        ).hexdigest()[:16]
        # An Event name is a DNS subdomain (<= 253); leave room for the suffix.
        return f"{self.name[:200]}.{digest}"


def event_key(
    obj: Mapping[str, Any], type_: str, reason: str, message: str, instance: str
) -> EventKey:
    meta = obj.get("metadata") or {}
    return EventKey(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        type=type_,
        reason=reason,
        message=message[:MESSAGE_LIMIT],
        instance=instance,
    )


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    key: EventKey, obj: Mapping[str, Any], component: str, now: datetime
) -> dict[str, Any]:
    """A new core/v1 Event (count 1) about ``obj``."""
    meta = obj.get("metadata") or {}
    stamp = timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": key.event_name, "namespace": key.namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": key.name,
            "namespace": key.namespace,
            "uid": key.uid,
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": key.type,
        "reason": key.reason,
        "message": key.message,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": key.instance,
    }


def bump_patch(count: int, now: datetime) -> dict[str, Any]:
    """The patch that records one more occurrence (``count`` is the new total)."""
    return {"count": count, "lastTimestamp": timestamp(now)}
