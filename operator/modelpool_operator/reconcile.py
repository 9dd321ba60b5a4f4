"""One reconcile of one ModelPool: observe -> plan -> execute -> report.

This is the I/O shell around the pure modules.  It is kopf-free: Kubernetes
writes go through the two callables it is given, so tests and the kopf
handlers share it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .execute import ActionObserver, Executor, Outcome
from .observe import PodInfo, observe, select
from .plan import Plan, plan, settle
from .settings import OperatorSettings
from .spec import PoolSpec, SpecError, parse_pool_spec
from .state import ActionKind, Observation, Owned, ledger_from_status, merge_claims
from .status import build_status, invalid_spec_status

__all__ = ["PoolKey", "Reconciler"]

log = logging.getLogger(__name__)

PoolKey = tuple[str, str]  # (namespace, name)

#: (body, type "Normal"/"Warning", reason, message) -> posts a Kubernetes Event
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]
PatchStatus = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]

_DONE_REASON = {
    ActionKind.PULL: "Pulled",
    ActionKind.LOAD: "Loaded",
    ActionKind.UNLOAD: "Unloaded",
    ActionKind.DELETE: "Deleted",
}


@dataclass
class Reconciler:
    settings: OperatorSettings
    session: aiohttp.ClientSession
    patch_status: PatchStatus
    post_event: PostEvent
    #: told about every action the executor runs (metrics)
    actions: ActionObserver | None = None
    #: freshest ledger per pool, ahead of what the watch has delivered back
    ledgers: dict[PoolKey, tuple[Owned, ...]] = field(default_factory=dict)
    #: pods each pool saw last time (a pod leaving the selector must wake its old pool)
    observed: dict[PoolKey, frozenset[str]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def forget(self, key: PoolKey) -> None:
        self.ledgers.pop(key, None)
        self.observed.pop(key, None)

    def others(
        self, key: PoolKey, pool_ledgers: Iterable[tuple[str, tuple[Owned, ...]]]
    ) -> dict[tuple[str, str], Owned]:
        """Claims of the other pools of the namespace (memory first, then their status)."""
        namespace, name = key
        ledgers: dict[str, tuple[Owned, ...]] = {n: ledger for n, ledger in pool_ledgers}
        for (ns, n), ledger in self.ledgers.items():
            if ns == namespace:
                ledgers[n] = ledger
        return merge_claims(ledger for n, ledger in ledgers.items() if n != name)

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Sequence[PodInfo],
        pool_ledgers: Iterable[tuple[str, tuple[Owned, ...]]] = (),
        *,
        deleting: bool = False,
    ) -> dict[str, Any] | None:
        """Bring the pool's pods in line with its spec; return the status written.

        With ``deleting``, the pool's models are pruned as if the spec listed none.
        Pools of one namespace reconcile one at a time, so each plans with the
        others' latest claims (the two-pool rule depends on it).
        """
        meta = body.get("metadata") or {}
        key: PoolKey = (str(meta.get("namespace")), str(meta.get("name")))
        generation = meta.get("generation")
        status = body.get("status") or {}
        lock = self._locks.setdefault(key[0], asyncio.Lock())
        async with lock:
            ledger = self.ledgers.get(key)
            if ledger is None:
                ledger = ledger_from_status(status)
            try:
                spec = parse_pool_spec(body.get("spec") or {})
            except SpecError as exc:
                new_status = invalid_spec_status(str(exc), generation, status, _now())
                self._transitions(body, status, new_status)
                await self.patch_status(*key, new_status)
                return new_status
            if deleting:
                spec = replace(spec, models=(), keys=frozenset(), prune=True)
            if spec.default_vram_bytes is None and self.settings.default_vram_bytes is not None:
                spec = replace(spec, default_vram_bytes=self.settings.default_vram_bytes)
            others = self.others(key, pool_ledgers)
            selected = select(pods, spec.selector)
            self.observed[key] = frozenset(p.name for p in selected)

            failures: list[str] = []
            executor = Executor(
                self.session,
                concurrency=self.settings.concurrency,
                attempts=self.settings.attempts,
                backoff=self.settings.backoff_seconds,
                request_timeout=self.settings.ollama_timeout_seconds,
                pull_idle_timeout=self.settings.pull_idle_timeout_seconds,
                load_timeout=self.settings.load_timeout_seconds,
                report=lambda o: self._report(body, o),
                observer=self.actions,
            )
            obs, current = await self._observe_and_plan(spec, selected, ledger, others)
            for _ in range(self.settings.max_rounds):
                if current.empty or failures:
                    break
                outcomes = await executor.run(current.actions)
                failed = [o for o in outcomes if not o.ok]
                failures += [f"{o.action.describe()}: {o.error}" for o in failed]
                ledger = settle(ledger, current, (o.action for o in failed))
                self.ledgers[key] = ledger
                obs, current = await self._observe_and_plan(spec, selected, ledger, others)
            # A plan may drop claims without any action (pod gone, model disowned).
            if not failures:
                ledger = current.ledger if current.empty else ledger
            self.ledgers[key] = ledger
            if deleting:
                return None
            new_status = build_status(
                spec=spec,
                generation=generation if isinstance(generation, int) else None,
                obs=obs,
                plan=current,
                ledger=ledger,
                failures=failures,
                previous_conditions=status.get("conditions"),
                now=_now(),
            )
            self._transitions(body, status, new_status)
            await self.patch_status(*key, new_status)
            return new_status

    async def _observe_and_plan(
        self,
        spec: PoolSpec,
        pods: Sequence[PodInfo],
        ledger: tuple[Owned, ...],
        others: Mapping[tuple[str, str], Owned],
    ) -> tuple[Observation, Plan]:
        obs = await observe(self.session, pods, timeout=self.settings.ollama_timeout_seconds)
        return obs, plan(spec, obs, ledger, others)

    def _report(self, body: Mapping[str, Any], o: Outcome) -> None:
        if o.ok:
            self.post_event(body, "Normal", _DONE_REASON[o.action.kind], o.action.describe())
        else:
            reason = f"{o.action.kind.value.capitalize()}Failed"
            self.post_event(body, "Warning", reason, f"{o.action.describe()}: {o.error}")

    def _transitions(
        self, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        """Post an Event when Degraded or Ready changes (not on every resync)."""
        before = {c.get("type"): c for c in old.get("conditions") or ()}
        for cond in new.get("conditions") or ():
            prev = before.get(cond["type"]) or {}
            changed = prev.get("status") != cond["status"] or prev.get("reason") != cond["reason"]
            if not changed:
                continue
            if cond["type"] == "Degraded" and cond["status"] == "True":
                self.post_event(body, "Warning", cond["reason"], cond["message"])
            elif cond["type"] == "Degraded" and prev.get("status") == "True":
                self.post_event(body, "Normal", "Recovered", "no longer degraded")
            elif cond["type"] == "Ready" and cond["status"] == "True":
                self.post_event(body, "Normal", "Ready", cond["message"])


def _now() -> datetime:
    return datetime.now(UTC)
