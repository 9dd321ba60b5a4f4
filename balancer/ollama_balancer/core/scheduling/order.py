"""The pool's dispatch order: classes, the fair-share clock between tenants, size within a tenant.

Within a class, tenants take turns by their fair-share counters
(:mod:`.fairness`): the tenant with the lowest counter goes next, and its
counter advances by the request's expected slot-seconds / weight, so a
tenant with weight 2 gets two slot-seconds for every one of a tenant with
weight 1, whatever either sends.  A tenant without a counter yet starts at
:func:`.fairness.start_counter` (it banks no credit).

Within a tenant, shortest expected work first, with aging: a request is due
at ``arrival + aging × expected_seconds``, and the earliest due goes first.
A short request therefore passes a long one that arrived before it, but
only while it arrives less than ``aging × (long − short)`` seconds later:
the long request is never starved.  A request with a deadline is due at its
latest start, ``deadline − expected_seconds``, on the same clock.

Across classes, requests that fill their class's own seats come first
(critical, then standard, then batch), then the rest in the same class
order: a class below its nominal share is never kept waiting by another
class's borrowing.  Within a class the order is the same in both parts.

:func:`competing` moves a batch request that has waited ``batch_aging`` seconds since it
arrived into standard, where it takes its turn and standard's seats.

:func:`may_borrow` says which requests may take another class's seats:
work that can be taken back (resumable, preempted fewer than the maximum
times) or that is short enough to end about as soon as reclaim would free
its slot.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from ..priority import Priority
from .fairness import start_counter
from .policy import SchedulerPolicy
from .shares import CLASSES, Tally
from .view import Candidate, PoolView, TenantKey

__all__ = ["class_sequence", "competing", "dispatch_order", "due", "may_borrow"]


def due(candidate: Candidate, aging: float) -> float:
    """When ``candidate`` is due within its tenant (earlier goes first)."""
    if candidate.deadline is not None:
        return candidate.deadline - candidate.expected_seconds
    return candidate.arrival + aging * candidate.expected_seconds


def competing(view: PoolView, policy: SchedulerPolicy) -> PoolView:
    """``view`` with each batch request that has waited ``policy.batch_aging`` seconds since
    it arrived in the class it competes in: standard."""
    limit = policy.batch_aging
    if math.isinf(limit) or not any(
        w.cls is Priority.BATCH and view.now - w.arrival >= limit for w in view.waiting
    ):
        return view
    return replace(
        view,
        waiting=tuple(
            replace(w, cls=Priority.STANDARD)
            if w.cls is Priority.BATCH and view.now - w.arrival >= limit
            else w
            for w in view.waiting
        ),
    )


def may_borrow(candidate: Candidate, policy: SchedulerPolicy) -> bool:
    """Whether ``candidate`` may take seats of another class (else only its own class's)."""
    takeable = candidate.resumable and candidate.preemptions < policy.max_preemptions
    return takeable or candidate.expected_seconds <= policy.unresumable_borrow


def class_sequence(
    candidates: Iterable[Candidate],
    cls: Priority,
    counters: Mapping[TenantKey, float],
    active: Collection[str],
    aging: float,
) -> list[Candidate]:
    """The waiting requests of one class in dispatch order.

    ``active`` names the class's tenants holding or waiting (where a tenant
    without a counter starts).  The counters advance as the sequence is built,
    so the order is the one successive dispatches would follow.
    """
    per_tenant: dict[str, list[tuple[float, float, str, Candidate]]] = {}
    for c in candidates:
        per_tenant.setdefault(c.tenant, []).append((due(c, aging), c.arrival, c.id, c))
    start = start_counter(counters, cls, active)
    heap: list[tuple[float, float, float, str, str, int]] = []
    lanes: dict[str, list[tuple[float, float, str, Candidate]]] = {}
    for tenant, lane in per_tenant.items():
        lane.sort(key=lambda e: e[:3])
        lanes[tenant] = lane
        head = lane[0]
        heap.append((counters.get((cls, tenant), start), head[0], head[1], head[2], tenant, 0))
    heapq.heapify(heap)
    out: list[Candidate] = []
    while heap:
        counter, _, _, _, tenant, i = heapq.heappop(heap)
        c = lanes[tenant][i][3]
        out.append(c)
        if i + 1 < len(lanes[tenant]):
            nxt = lanes[tenant][i + 1]
            counter += c.expected_seconds / c.weight
            heapq.heappush(heap, (counter, nxt[0], nxt[1], nxt[2], tenant, i + 1))
    return out


def dispatch_order(view: PoolView, policy: SchedulerPolicy, tally: Tally) -> list[Candidate]:
    """The pool's waiting requests in fleet-wide dispatch order (see the module doc)."""
    by_class: dict[Priority, list[Candidate]] = {c: [] for c in CLASSES}
    for w in view.waiting:
        by_class[w.cls].append(w)
    own: list[Candidate] = []
    rest: list[Candidate] = []
    for cls in CLASSES:
        seq = class_sequence(
            by_class[cls], cls, view.counters, tally.weights[cls].keys(), policy.aging
        )
        room = max(0, tally.nominal[cls] - tally.held[cls])
        own.extend(seq[:room])
        rest.extend(seq[room:])
    return own + rest
