"""Fair share between tenants of a class: the counters in slot-seconds, shares, Jain's index.

Each (class, tenant) has a **counter**: the slot-seconds it was served,
divided by its weight (the keys file's ``weight``).  The tenant with the
lowest counter goes next (:mod:`.order`), as in the Virtual Token Counter of
Sheng et al. (OSDI 2024), but charged in slot-seconds, not tokens: a slot is
what tenants compete for here, and it is held for the whole generation.

* :func:`charge_dispatch` — at dispatch, the counter advances by the
  request's *estimated* slot-seconds / weight (nothing better is known yet);
* :func:`charge_completion` — at completion (or preemption) the estimate is
  corrected by (actual − estimated) / weight, as Kubernetes APF corrects its
  seat-seconds guess;
* :func:`lift` — a tenant that becomes active again (nothing held, nothing
  waiting in the class) is lifted to the lowest counter of the class's active
  tenants, so an idle tenant banks no credit: being away for an hour does not
  buy an hour of everyone else's slots.

The I/O shell stores the counters (fleet-wide, so replicas share one clock)
and calls these functions; they only compute.  A preempted request is
completed with the slot-seconds it actually held and its continuation is
dispatched again with the work left, so preemption costs its tenant exactly
the slot time it used.

A tenant's **fair share** of its class's seats is ``seats × weight / Σ
weights`` over the class's active tenants (holding or waiting).

:func:`jain` is Jain's fairness index, ``(Σx)² / (n·Σx²)``: 1 when every
backlogged tenant got the same service per weight, 1/n when one got all of
it (the benchmark's figure, :func:`weighted_jain`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from ..priority import Priority
from .view import TenantKey

__all__ = [
    "charge_completion",
    "charge_dispatch",
    "fair_shares",
    "jain",
    "lift",
    "start_counter",
    "weighted_jain",
]


def charge_dispatch(counter: float, expected_seconds: float, weight: float) -> float:
    """The counter after dispatching a request estimated at ``expected_seconds``."""
    return counter + expected_seconds / weight


def charge_completion(
    counter: float, expected_seconds: float, actual_seconds: float, weight: float
) -> float:
    """The counter after a request charged ``expected_seconds`` held its slot ``actual_seconds``."""
    return counter + (actual_seconds - expected_seconds) / weight


def start_counter(
    counters: Mapping[TenantKey, float], cls: Priority, active: Collection[str]
) -> float:
    """Where a tenant becoming active in ``cls`` starts, whatever it was served before.

    The lowest counter of the other ``active`` tenants of the class (those holding
    or waiting; those without a counter yet do not count); when none is active,
    the highest counter of the class, so that everyone who comes back after an
    idle spell starts even; 0 for a class nobody used yet.
    """
    present = [counters[(cls, t)] for t in active if (cls, t) in counters]
    if present:
        return min(present)
    known = [v for (c, _), v in counters.items() if c is cls]
    return max(known, default=0.0)


def lift(
    counters: Mapping[TenantKey, float], cls: Priority, tenant: str, active: Collection[str]
) -> float:
    """The counter of ``tenant`` as it becomes active in ``cls`` (call it on such an arrival).

    ``active`` names the class's other active tenants.  A counter above the start
    point is kept (a tenant cannot shed its debt by going away for a moment).
    """
    floor = start_counter(counters, cls, [t for t in active if t != tenant])
    own = counters.get((cls, tenant))
    return floor if own is None else max(own, floor)


def fair_shares(seats: float, weights: Mapping[str, float]) -> dict[str, float]:
    """Each active tenant's share of ``seats``: ``seats × weight / Σ weights``."""
    total = sum(weights.values())
    if total <= 0.0:
        return {t: 0.0 for t in weights}
    return {t: seats * w / total for t, w in weights.items()}


def jain(values: Iterable[float]) -> float:
    """Jain's fairness index of ``values``: 1 = all equal, 1/n = one got everything.

    An empty or all-zero list is perfectly fair (1.0).
    """
    xs = list(values)
    square_sum = sum(x * x for x in xs)
    if not xs or square_sum == 0.0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * square_sum)


def weighted_jain(
    served: Mapping[str, float], weights: Mapping[str, float], backlogged: Iterable[str]
) -> float:
    """Jain's index over the ``backlogged`` tenants' served slot-seconds / weight.

    Only tenants that always had work waiting deserve their full share; the
    others asked for less, so they are left out.  A missing weight is 1.
    """
    return jain(served.get(t, 0.0) / weights.get(t, 1.0) for t in backlogged)
