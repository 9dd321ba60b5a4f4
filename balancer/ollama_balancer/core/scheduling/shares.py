"""Class shares with lending: nominal seats, what is lent and borrowed, each class's limit.

Slots are the seats of Kubernetes API Priority and Fairness.  With S slots in
the pool, each class owns ``nominal`` seats (its share of S, rounded by largest
remainder so the three sum to S).  When a slot is free, a class may take it

* while it holds fewer than its nominal seats (its own), or else
* by **borrowing** an *idle lendable* seat of another class, within its own
  borrow limit (``borrow_limit × S`` seats beyond its nominal).

A class's seats are **idle** when it holds and waits for fewer than its
nominal; of those, only the lendable part (``lendable × nominal`` seats,
rounded down) may be lent, and the rest stays free for its owner even when
others wait.  Seats lent earlier come back by preemption once the owner
wants them (:mod:`.reclaim`), not by lending less.

:class:`Tally` keeps these counts through one pump (grants and preemptions
move them); :class:`ClassShare` is the per-class summary the shell exports
as metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ..priority import Priority
from .policy import SchedulerPolicy
from .view import PoolView, TenantKey

__all__ = ["ClassShare", "Tally", "largest_remainder", "seats"]

K = TypeVar("K")

#: Classes in rank order: ties of remainders go to the higher class.
CLASSES = tuple(sorted(Priority, key=lambda p: p.rank))
#: Float noise: 0.6 × 5 is 2.9999999999999996, which must round down to 3, not 2.
_EPS = 1e-9


def largest_remainder(total: int, weights: Mapping[K, float], order: Iterable[K]) -> dict[K, int]:
    """Split ``total`` in proportion to ``weights``; ties of remainders go first in ``order``."""
    keys = list(order)
    mass = sum(weights.get(k, 0.0) for k in keys)
    if total <= 0 or mass <= 0.0:
        return {k: 0 for k in keys}
    quota = {k: total * weights.get(k, 0.0) / mass for k in keys}
    out = {k: math.floor(quota[k] + _EPS) for k in keys}
    left = total - sum(out.values())
    by_remainder = sorted(keys, key=lambda k: -(quota[k] - out[k]))  # stable: ties keep order
    for k in by_remainder[:left]:
        out[k] += 1
    return out


def seats(slots: int, policy: SchedulerPolicy) -> dict[Priority, int]:
    """Nominal seats per class: each class's share of ``slots``, summing to ``slots``."""
    return largest_remainder(slots, {c: policy.of(c).nominal for c in CLASSES}, CLASSES)


@dataclass(frozen=True, slots=True)
class ClassShare:
    """One class in one pool, now: the figures behind ``ollama_fleet_class_*``."""

    cls: Priority
    nominal: int
    """Seats the class owns."""
    lendable: int
    """Of those, how many others may borrow while the class leaves them idle."""
    borrow_limit: int
    """Most seats the class may hold beyond its nominal."""
    held: int
    waiting: int
    lent: int
    """Seats of this class held by other classes."""
    borrowed: int
    """Seats this class holds beyond its nominal."""
    limit: int
    """Most seats the class could hold now: nominal + what it may still borrow."""


class Tally:
    """Seat counts of one pool through one pump (mutable scratch, never returned).

    Built from the view: who holds what per class and per (class, tenant), and
    the active tenants' weights per class.  :meth:`take` and :meth:`release`
    move a seat; the idle lendable supply is fixed for the pump (granting moves
    a request from waiting to holding, which leaves each class's demand as it
    was).
    """

    def __init__(self, view: PoolView, policy: SchedulerPolicy) -> None:
        self.nominal = seats(view.slots, policy)
        self.lendable = {
            c: math.floor(self.nominal[c] * policy.of(c).lendable + _EPS) for c in CLASSES
        }
        self.borrow_max = {
            c: math.floor(view.slots * policy.of(c).borrow_limit + _EPS) for c in CLASSES
        }
        self.held = dict.fromkeys(CLASSES, 0)
        self.waiting = dict.fromkeys(CLASSES, 0)
        self.tenant_held: dict[TenantKey, int] = {}
        self.weights: dict[Priority, dict[str, float]] = {c: {} for c in CLASSES}
        for h in view.holders:
            self.held[h.cls] += 1
            key = (h.cls, h.tenant)
            self.tenant_held[key] = self.tenant_held.get(key, 0) + 1
            self._weigh(h.cls, h.tenant, h.weight)
        for w in view.waiting:
            self.waiting[w.cls] += 1
            self._weigh(w.cls, w.tenant, w.weight)
        # Fixed for the pump: what each class leaves idle and may lend.
        self.offer = {
            c: min(max(0, self.nominal[c] - self.held[c] - self.waiting[c]), self.lendable[c])
            for c in CLASSES
        }
        self.supply = sum(self.offer.values())
        self.weight_total = {c: sum(self.weights[c].values()) for c in CLASSES}

    def _weigh(self, cls: Priority, tenant: str, weight: float) -> None:
        ws = self.weights[cls]
        ws[tenant] = max(weight, ws.get(tenant, 0.0))

    # ---- seats
    def borrowed(self, cls: Priority) -> int:
        return max(0, self.held[cls] - self.nominal[cls])

    def borrowing(self) -> int:
        """Seats held beyond nominal, all classes together."""
        return sum(self.borrowed(c) for c in CLASSES)

    def may_take(self, cls: Priority, may_borrow: bool) -> bool:
        """Whether a request of ``cls`` may take a free slot now.

        ``may_borrow`` is false for work that must not borrow (:func:`.order.may_borrow`),
        unless its class owns no seat at all: borrowing is then its only way to run.
        """
        if self.held[cls] < self.nominal[cls]:
            return True
        return (
            (may_borrow or self.nominal[cls] == 0)
            and self.borrowed(cls) < self.borrow_max[cls]
            and self.borrowing() < self.supply
        )

    def take(self, cls: Priority, tenant: str) -> None:
        self.held[cls] += 1
        key = (cls, tenant)
        self.tenant_held[key] = self.tenant_held.get(key, 0) + 1

    def release(self, cls: Priority, tenant: str) -> None:
        self.held[cls] -= 1
        self.tenant_held[(cls, tenant)] -= 1

    def limit(self, cls: Priority) -> int:
        """Most seats ``cls`` could hold now: its own, what it borrows, what it could borrow.

        It could borrow what is left of the idle lendable seats, but not its own.
        """
        spare = max(0, min(self.supply - self.offer[cls], self.supply - self.borrowing()))
        return self.nominal[cls] + min(self.borrow_max[cls], self.borrowed(cls) + spare)

    # ---- tenants
    def fair(self, cls: Priority, tenant: str, pending: int = 0) -> float:
        """``tenant``'s fair share of the seats ``cls`` holds or owns, whichever is more.

        ``pending`` seats are promised to the class and not yet held (reclaim).
        """
        weight = self.weights[cls].get(tenant)
        if weight is None:
            return 0.0
        share = max(self.nominal[cls], self.held[cls] + pending) * weight / self.weight_total[cls]
        # Rounded: 6 × 0.1 / 0.2 is 3.0000000000000004, which must compare as 3 held seats.
        return round(share, 9)

    # ---- summary
    def shares(self) -> tuple[ClassShare, ...]:
        unused = {c: max(0, self.nominal[c] - self.held[c]) for c in CLASSES}
        lent = largest_remainder(
            min(self.borrowing(), sum(unused.values())),
            {c: float(n) for c, n in unused.items()},
            CLASSES,
        )
        return tuple(
            ClassShare(
                cls=c,
                nominal=self.nominal[c],
                lendable=self.lendable[c],
                borrow_limit=self.borrow_max[c],
                held=self.held[c],
                waiting=self.waiting[c],
                lent=lent[c],
                borrowed=self.borrowed(c),
                limit=self.limit(c),
            )
            for c in CLASSES
        )
