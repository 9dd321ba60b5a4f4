"""Admission from an estimate: how long each waiting request will wait, and who is refused.

The estimate plays the pool forward on expected times: the free slots are
free now, each holder frees its slot at ``started + expected_seconds`` (now,
if that has passed), and the waiting requests, in dispatch order, each take
the earliest slot their class may use — a class holds at most its current
limit (:meth:`.shares.Tally.limit`; only its nominal seats for work that may
not borrow), so a request whose class is at its limit waits for one of its
own class's slots instead.  Its wait is the time until it starts.

A request **entitled** to a share (:mod:`.reclaim`; here: within the first
``nominal − held`` of its class, or within its tenant's fair share, counting
its tenant's requests ahead of it) does not wait for that: reclaim takes a
slot back after the class's wait budget, so its wait is capped at
``wait_budget + cancel_latency`` — provided a holder exists that reclaim could
take (resumable, not preempted too often, a borrower or over its share).

:func:`admit` answers an arrival: refused (``429``) when the estimate exceeds
its class's ``max_wait`` — except that an entitled request is never refused —
with ``Retry-After`` = the estimate beyond ``max_wait`` (rounded up, 1 s to
1 h), the time after which the pool should have drained enough to take it.
A pool with no slot to estimate from (no warm slot, or none free and none
held) has no estimate (infinite) and refuses no one: whether to load the
model is routing's decision.  A class that may take no seat now (it owns none
and nothing is idle to borrow) is estimated as if it could use one, since a
lender's demand passes.

Waits are seconds from ``view.now``: for a request already waiting, what
is left of its wait.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..priority import Priority
from .order import competing, dispatch_order, may_borrow
from .policy import SchedulerPolicy
from .reclaim import Reason
from .shares import CLASSES, Tally
from .view import Candidate, PoolView, TenantKey

__all__ = ["MAX_RETRY_AFTER", "Admission", "admit", "entitled", "estimate_waits"]

#: Retry-After is capped: a client should come back within the hour, not tomorrow.
MAX_RETRY_AFTER = 3600


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to an arrival."""

    admitted: bool
    wait: float
    """Estimated seconds until it gets a slot (``math.inf``: no warm slot to estimate from)."""
    position: int
    """Requests of the pool ahead of it in dispatch order (0 = next)."""
    entitled: bool
    """Within its class's nominal seats or its tenant's fair share (never refused)."""
    retry_after: int | None = None
    """Seconds for ``Retry-After`` when refused."""


def entitled(order: Sequence[Candidate], tally: Tally) -> dict[str, Reason]:
    """The waiting requests entitled to a share at their place in ``order``, and to which."""
    seen = dict.fromkeys(CLASSES, 0)
    ahead: dict[TenantKey, int] = {}
    fair: dict[TenantKey, float] = {}
    out: dict[str, Reason] = {}
    for x in order:
        key = (x.cls, x.tenant)
        before_class = seen[x.cls]
        seen[x.cls] = before_class + 1
        if tally.held[x.cls] + before_class < tally.nominal[x.cls]:
            out[x.id] = Reason.CLASS_SHARE
        before_tenant = ahead.get(key, 0)
        ahead[key] = before_tenant + 1
        if x.id in out:
            continue
        if key not in fair:
            fair[key] = tally.fair(x.cls, x.tenant) - tally.tenant_held.get(key, 0)
        if before_tenant < fair[key]:
            out[x.id] = Reason.TENANT_SHARE
    return out


def estimate_waits(
    view: PoolView,
    policy: SchedulerPolicy,
    order: Sequence[Candidate],
    free_slots: int,
    tally: Tally,
    rights: Mapping[str, Reason] | None = None,
) -> dict[str, float]:
    """Estimated seconds until each request of ``order`` gets a slot (see the module doc).

    ``rights`` are :func:`entitled`'s answer for ``order``, if the caller has it already.
    """
    if view.slots <= 0:
        return {x.id: math.inf for x in order}
    now = view.now
    free = [now] * max(0, free_slots)
    running: dict[Priority, list[float]] = {c: [] for c in CLASSES}
    for h in view.holders:
        end = max(now, h.expected_end)
        free.append(end)
        running[h.cls].append(end)
    heapq.heapify(free)
    for ends in running.values():
        heapq.heapify(ends)
    # A class that may take no seat now still gets one once a lender's demand passes.
    limits = {c: max(1, tally.limit(c)) for c in CLASSES}
    capped = entitled(order, tally) if rights is None else rights
    victims = _victims(view, policy, tally)
    out: dict[str, float] = {}
    for x in order:
        if not free:
            out[x.id] = math.inf
            continue
        if may_borrow(x, policy) or tally.nominal[x.cls] == 0:
            limit = limits[x.cls]
        else:
            limit = tally.nominal[x.cls]
        t = heapq.heappop(free)
        ends = running[x.cls]
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        while len(ends) >= limit:
            t = max(t, heapq.heappop(ends))
        end = t + x.expected_seconds
        heapq.heappush(free, end)
        heapq.heappush(ends, end)
        wait = t - now
        reason = capped.get(x.id)
        if reason is not None and _can_reclaim(x, reason, victims):
            wait = min(wait, policy.of(x.cls).wait_budget + policy.cancel_latency)
        out[x.id] = wait
    return out


@dataclass(frozen=True, slots=True)
class _Victims:
    """Who reclaim could take from: borrowing classes, and over-share tenants per class."""

    classes: frozenset[Priority]
    tenants: dict[Priority, set[str]]


def _victims(view: PoolView, policy: SchedulerPolicy, tally: Tally) -> _Victims:
    """Holders reclaim could take, by class and by tenant.

    Resumable and preempted fewer than the maximum times; generating or not (a holder
    still reading its prompt soon will be).
    """
    classes: set[Priority] = set()
    tenants: dict[Priority, set[str]] = {c: set() for c in CLASSES}
    for h in view.holders:
        if not h.resumable or h.preemptions >= policy.max_preemptions:
            continue
        if tally.held[h.cls] > tally.nominal[h.cls]:
            classes.add(h.cls)
        if tally.tenant_held[(h.cls, h.tenant)] - 1 >= tally.fair(h.cls, h.tenant):
            tenants[h.cls].add(h.tenant)
    return _Victims(frozenset(classes), tenants)


def _can_reclaim(x: Candidate, reason: Reason, victims: _Victims) -> bool:
    if reason is Reason.CLASS_SHARE and victims.classes - {x.cls}:
        return True
    return bool(victims.tenants[x.cls] - {x.tenant})


def admit(
    view: PoolView,
    policy: SchedulerPolicy,
    candidate: Candidate,
    free_slots: int | None = None,
) -> Admission:
    """Admit or refuse ``candidate`` arriving at ``view.now`` (not yet in ``view.waiting``).

    ``free_slots`` defaults to the slots no holder uses.
    """
    if any(w.id == candidate.id for w in view.waiting):
        raise ValueError(f"request {candidate.id!r} is already waiting")
    free = max(0, view.slots - len(view.holders)) if free_slots is None else free_slots
    view = competing(replace(view, waiting=(*view.waiting, candidate)), policy)
    candidate = next(w for w in view.waiting if w.id == candidate.id)
    tally = Tally(view, policy)
    order = dispatch_order(view, policy, tally)
    position = next(i for i, x in enumerate(order) if x.id == candidate.id)
    rights = entitled(order, tally)
    wait = estimate_waits(view, policy, order, free, tally, rights)[candidate.id]
    is_entitled = candidate.id in rights
    # No estimate (no warm slot known) refuses no one: loading is routing's decision.
    if math.isinf(wait) or is_entitled or wait <= policy.of(candidate.cls).max_wait:
        return Admission(True, wait, position, is_entitled)
    beyond = wait - policy.of(candidate.cls).max_wait
    retry = max(1, min(MAX_RETRY_AFTER, math.ceil(beyond)))
    return Admission(False, wait, position, is_entitled, retry)
