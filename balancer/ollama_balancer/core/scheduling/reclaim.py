"""Reclaim: which slots to take back, from whom, for whom.

A waiting request is **entitled** when

* its class holds fewer than its nominal seats (``class-share``), or
* its tenant holds fewer than its fair share of the seats its class holds
  or owns, whichever is more (``tenant-share``; :meth:`.shares.Tally.fair`).

When an entitled request finds no free slot it may use, and no slot is
expected to free by itself within its class's wait budget (a holder whose
``started + expected_seconds`` falls within the budget), one holder is
preempted for it.  The victim is chosen among holders that

* borrow: a holder of another class that holds more than its nominal seats,
  and stays at or above them without this one (``class-share``); or a holder
  of another tenant of the same class that holds more than its fair share,
  and stays at or above it (``tenant-share``) — never a class's own nominal
  share, never a tenant's own fair share;
* already generate (``first_byte`` set): Ollama notices a closed connection
  only when it next sends something, so a request still reading its prompt
  would hold the slot until its prefill ends anyway;
* can resume (``resumable``) and were preempted fewer than ``max_preemptions``
  times;
* are not expected to end within the wait budget anyway;

preferring batch, then standard, then critical; then the tenant furthest over
its fair share (in seats); then the cheapest to redo (``redo_cost``); then the
youngest.  Each entitled request gets at most one victim, and none when a
natural free slot comes in time; each holder is taken at most once, and a
holder whose end an entitled request counts on is not taken for another.

A holder past its expected end by more than the budget is assumed to run on
(its estimate was short) and counts as long; one just past it counts as
about to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..priority import Priority
from .policy import SchedulerPolicy
from .shares import CLASSES, Tally
from .view import Candidate, Holder, PoolView, TenantKey

__all__ = ["Preemption", "Reason", "ends_in_time", "reclaim"]


class Reason(StrEnum):
    """Why a slot is taken back (a metric label)."""

    CLASS_SHARE = "class-share"
    TENANT_SHARE = "tenant-share"


@dataclass(frozen=True, slots=True)
class Preemption:
    """Cancel ``victim`` (its replica resumes it later) and give its slot to ``beneficiary``."""

    victim: Holder
    beneficiary: Candidate
    reason: Reason


def ends_in_time(holder: Holder, now: float, budget: float) -> bool:
    """Whether ``holder`` is expected to free its slot within ``budget`` seconds of ``now``."""
    return now - budget <= holder.expected_end <= now + budget


def reclaim(
    view: PoolView,
    policy: SchedulerPolicy,
    tally: Tally,
    waiting: Sequence[Candidate],
) -> list[Preemption]:
    """Preemptions for the still ``waiting`` requests, in dispatch order.

    ``tally`` holds the seats after this pump's grants; it is updated as
    victims hand their slots to beneficiaries.
    """
    now = view.now
    takeable = [
        h
        for h in view.holders
        if h.first_byte is not None and h.resumable and h.preemptions < policy.max_preemptions
    ]
    by_end = sorted(view.holders, key=lambda h: (h.expected_end, h.lease))
    soon = {c: _Soon(by_end, now, policy.of(c).wait_budget) for c in CLASSES}
    claimed: set[str] = set()  # holders whose end an entitled request waits for, or victims
    pending = dict.fromkeys(CLASSES, 0)  # seats promised by a natural end
    pending_tenant: dict[TenantKey, int] = {}
    # A search that found no victim finds none again until the counts change.
    version = 0
    barren: dict[tuple[Reason, Priority, str], int] = {}
    overs = _Overs(tally, pending)
    out: list[Preemption] = []
    for x in waiting:
        cls, key = x.cls, (x.cls, x.tenant)
        own = tally.held[cls] + pending[cls] < tally.nominal[cls]
        fair = tally.tenant_held.get(key, 0) + pending_tenant.get(key, 0) < tally.fair(
            cls, x.tenant, pending[cls]
        )
        if not (own or fair):
            continue
        natural = soon[cls].first(claimed)
        if natural is not None:
            claimed.add(natural.lease)
            pending[cls] += 1
            pending_tenant[key] = pending_tenant.get(key, 0) + 1
            version += 1
            continue
        in_time = soon[cls].leases
        found: tuple[Holder, Reason] | None = None
        if own and barren.get((Reason.CLASS_SHARE, cls, "")) != version:
            victim = _best(
                [
                    h
                    for h in takeable
                    if h.cls is not cls
                    and h.lease not in claimed
                    and h.lease not in in_time
                    and tally.held[h.cls] - 1 >= tally.nominal[h.cls]
                ],
                overs,
                version,
            )
            if victim is None:
                barren[(Reason.CLASS_SHARE, cls, "")] = version
            else:
                found = (victim, Reason.CLASS_SHARE)
        if found is None and fair and barren.get((Reason.TENANT_SHARE, cls, x.tenant)) != version:
            over = overs.get(cls, version)
            victim = _best(
                [
                    h
                    for h in takeable
                    if h.cls is cls
                    and h.tenant != x.tenant
                    and over[h.tenant] >= 1.0
                    and h.lease not in claimed
                    and h.lease not in in_time
                ],
                overs,
                version,
            )
            if victim is None:
                barren[(Reason.TENANT_SHARE, cls, x.tenant)] = version
            else:
                found = (victim, Reason.TENANT_SHARE)
        if found is not None:
            victim, reason = found
            claimed.add(victim.lease)
            tally.release(victim.cls, victim.tenant)
            tally.take(cls, x.tenant)
            out.append(Preemption(victim, x, reason))
            version += 1
    return out


class _Soon:
    """The holders expected to end within one budget, earliest first (:func:`ends_in_time`)."""

    def __init__(self, by_end: Sequence[Holder], now: float, budget: float) -> None:
        self.holders = [h for h in by_end if ends_in_time(h, now, budget)]
        self.leases = frozenset(h.lease for h in self.holders)
        self._next = 0

    def first(self, claimed: set[str]) -> Holder | None:
        """The earliest to end that nobody counts on yet (claims only grow: skip them for good)."""
        while self._next < len(self.holders) and self.holders[self._next].lease in claimed:
            self._next += 1
        return self.holders[self._next] if self._next < len(self.holders) else None


class _Overs:
    """Seats each active tenant holds beyond its fair share (negative: below), per class.

    Recomputed only when the counts changed (``version``): the victim searches of
    one pump ask again and again.
    """

    def __init__(self, tally: Tally, pending: dict[Priority, int]) -> None:
        self._tally = tally
        self._pending = pending
        self._cache: dict[Priority, tuple[int, dict[str, float]]] = {}

    def get(self, cls: Priority, version: int) -> dict[str, float]:
        hit = self._cache.get(cls)
        if hit is not None and hit[0] == version:
            return hit[1]
        tally, pending = self._tally, self._pending[cls]
        over = {
            t: tally.tenant_held.get((cls, t), 0) - tally.fair(cls, t, pending)
            for t in tally.weights[cls]
        }
        self._cache[cls] = (version, over)
        return over


def _best(holders: list[Holder], overs: _Overs, version: int) -> Holder | None:
    """The preferred victim: lowest class, tenant furthest over its share, cheapest, youngest."""
    if not holders:
        return None

    def key(h: Holder) -> tuple[int, float, float, float, str]:
        over = overs.get(h.cls, version)[h.tenant]
        return (-h.cls.rank, -over, h.redo_cost, -h.started, h.lease)

    return min(holders, key=key)
