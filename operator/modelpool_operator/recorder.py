"""Post Kubernetes Events without blocking the caller, aggregating repeats (events.py).

``post()`` returns at once; a background task creates the Event, or bumps its
``count`` and ``lastTimestamp`` when the same report was made before (by this
process, or by an earlier one: the name is deterministic, so a 409 on create
means "bump it").  A failure to post is logged, never raised: Events are for
people, the operator's work must not depend on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from .events import EventKey, bump_patch, event_body, event_key

__all__ = ["EventRecorder", "EventSink"]

log = logging.getLogger(__name__)

#: Event identities remembered (their counts) before starting over.
_REMEMBERED = 5000


class EventSink(Protocol):
    def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class EventApi(Protocol):
    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None: ...
    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...
    async def event_count(self, namespace: str, name: str) -> int: ...


class EventRecorder:
    def __init__(self, api: EventApi, component: str, instance: str) -> None:
        self.api = api
        self.component = component
        self.instance = instance
        self._counts: dict[EventKey, int] = {}
        self._locks: dict[EventKey, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        key = event_key(obj, type_, reason, message, self.instance)
        if not key.uid:
            return
        if len(self._counts) > _REMEMBERED and not self._tasks:
            # Forgetting costs nothing but a read: a 409 on create finds the count.
            self._counts.clear()
            self._locks.clear()
        task = asyncio.ensure_future(self._post(key, dict(obj)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, key: EventKey, obj: Mapping[str, Any]) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = datetime.now(UTC)
            try:
                count = self._counts.get(key)
                if count is None:
                    try:
                        await self.api.create_event(
                            key.namespace, event_body(key, obj, self.component, now)
                        )
                        self._counts[key] = 1
                        return
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        count = await self.api.event_count(key.namespace, key.event_name)
                try:
                    await self.api.patch_event(
                        key.namespace, key.event_name, bump_patch(count + 1, now)
                    )
                    self._counts[key] = count + 1
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    # Expired (events live an hour) or deleted: start over.
                    await self.api.create_event(
                        key.namespace, event_body(key, obj, self.component, now)
                    )
                    self._counts[key] = 1
            except Exception as exc:
                log.warning("could not post Event %s/%s: %s", key.reason, key.name, exc)

    async def close(self, timeout: float = 2.0) -> None:
        """Let queued Events go out (briefly), then give up on them."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._tasks, return_exceptions=True), timeout
                )
        for task in list(self._tasks):
            task.cancel()
