"""Leader election on a coordination.k8s.io/v1 Lease (decisions in lease.py).

Every replica runs kopf's watches (so a standby's view of pools and pods is
warm); only the holder of the Lease runs pool workers.  The holder renews every
``duration / 5`` seconds and stops acting if it could not renew for two thirds of
the duration, before anyone else may take over.  A standby checks every second
and takes the Lease once it saw no renewal for a whole duration: after a
``kill -9`` of the holder that is at most ``duration + 2`` seconds.  On a clean
stop the holder hands the Lease back, and a standby takes it within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from .lease import LeaseRecord, lease_spec, may_acquire, record_of

__all__ = ["Elector", "LeaseApi"]

log = logging.getLogger(__name__)


class LeaseApi(Protocol):
    async def read_lease(self, namespace: str, name: str) -> dict[str, object] | None: ...
    async def write_lease(
        self, namespace: str, name: str, spec: dict[str, object], resource_version: str | None
    ) -> bool: ...


Callback = Callable[[], Awaitable[None]]


class Elector:
    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: float = 10.0,
        on_start: Callback,
        on_stop: Callback,
        retry: float = 1.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = max(2, round(duration))
        self.renew_every = max(0.5, self.duration / 5)
        self.renew_deadline = self.duration * 2 / 3
        self.retry = retry
        self.on_start = on_start
        self.on_stop = on_stop
        self.leading = False
        self._seen: LeaseRecord | None = None
        self._seen_at = time.monotonic()
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop acting and hand the Lease back (a standby takes over at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leading:
            await self._step_down("stopping")
            with contextlib.suppress(Exception):
                lease = await self.api.read_lease(self.namespace, self.name)
                rec = record_of(lease)
                if rec is not None and rec.holder == self.identity:
                    spec = lease_spec(rec, self.identity, self.duration, _now(), release=True)
                    await self.api.write_lease(
                        self.namespace, self.name, spec, rec.resource_version
                    )
                    log.info("lease %s/%s released", self.namespace, self.name)

    async def _step_down(self, why: str) -> None:
        if self.leading:
            self.leading = False
            log.warning("lease %s/%s: no longer leading (%s)", self.namespace, self.name, why)
            await self.on_stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self._once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                if self.leading and time.monotonic() - self._renewed_at > self.renew_deadline:
                    await self._step_down("could not renew in time")
            await asyncio.sleep(self.renew_every if self.leading else self.retry)

    async def _once(self) -> None:
        lease = await self.api.read_lease(self.namespace, self.name)
        rec = record_of(lease)
        now = time.monotonic()
        if rec is None or not rec.same_term(self._seen):
            self._seen, self._seen_at = rec, now
        if self.leading and (rec is None or rec.holder != self.identity):
            await self._step_down(f"taken over by {rec.holder if rec else 'nobody'}")
            return
        if not may_acquire(rec, self.identity, now - self._seen_at):
            return
        spec = lease_spec(rec, self.identity, self.duration, _now())
        written = await self.api.write_lease(
            self.namespace, self.name, spec, rec.resource_version if rec else None
        )
        if not written:
            return  # someone else won the race; look again next time
        self._renewed_at = now
        if not self.leading:
            self.leading = True
            log.info(
                "lease %s/%s acquired by %s (was %s)",
                self.namespace, self.name, self.identity, (rec.holder if rec else "") or "free",
            )  # fmt: skip
            await self.on_start()


def _now() -> datetime:
    return datetime.now(UTC)
