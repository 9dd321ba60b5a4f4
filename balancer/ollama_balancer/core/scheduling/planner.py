"""One pump of the scheduler for one pool: who takes the free slots, who is preempted for whom.

:func:`plan` is the entry point the wait room calls whenever a slot frees, a
request arrives or leaves, or time passes (a wait budget runs out).  It
computes, from the fleet-wide :class:`~.view.PoolView`:

1. the class shares (:mod:`.shares`), for metrics;
2. the dispatch order (:mod:`.order`);
3. the estimated wait of every waiting request (:mod:`.estimate`);
4. the **grants**: walking the order, each request takes one of the
   ``free_slots`` if its class may take a slot (its own seat, or a borrowed
   one: :meth:`.shares.Tally.may_take`); a request that may not is passed
   over, and the walk goes on;
5. the **preemptions** for requests still waiting (:mod:`.reclaim`).

The caller binds the grants of its own replica (:meth:`SchedulePlan.granted_to`),
cancels the victims it relays (:meth:`SchedulePlan.preempted_by`) and hands
each victim's slot to its beneficiary; it charges the fair-share counters
(:mod:`.fairness`) as requests are dispatched and complete.  Nothing here
does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .estimate import estimate_waits
from .order import competing, dispatch_order, may_borrow
from .policy import SchedulerPolicy
from .reclaim import Preemption, reclaim
from .shares import ClassShare, Tally
from .view import Candidate, PoolView

__all__ = ["SchedulePlan", "plan"]


@dataclass(frozen=True, slots=True)
class SchedulePlan:
    """What one pump decided for one pool."""

    order: tuple[Candidate, ...]
    """Every waiting request, in fleet-wide dispatch order."""
    grants: tuple[Candidate, ...]
    """Requests that take a free slot now, in order (at most ``free_slots``)."""
    preemptions: tuple[Preemption, ...]
    shares: tuple[ClassShare, ...]
    """Per class, before this pump's grants: seats, held, waiting, lent, borrowed, limit."""
    waits: Mapping[str, float] = field(default_factory=dict)
    """Estimated seconds from now until each waiting request gets a slot (if asked for)."""

    def granted_to(self, replica: str) -> tuple[Candidate, ...]:
        """The grants ``replica`` binds (it holds those requests)."""
        return tuple(c for c in self.grants if c.replica == replica)

    def others_ahead(self, replica: str) -> dict[str, int]:
        """Per request of ``replica`` left waiting: how many requests other replicas hold
        wait ahead of it in the order (the granted take free slots instead), so that its
        replica weighs a cold load against the whole fleet's queue."""
        granted = {c.id for c in self.grants}
        out: dict[str, int] = {}
        others = 0
        for c in self.order:
            if c.id in granted:
                continue
            if c.replica == replica:
                out[c.id] = others
            else:
                others += 1
        return out

    def preempted_by(self, replica: str) -> tuple[Preemption, ...]:
        """The preemptions ``replica`` carries out (it relays the victims)."""
        return tuple(p for p in self.preemptions if p.victim.replica == replica)


def plan(
    view: PoolView, policy: SchedulerPolicy, free_slots: int, *, estimate: bool = True
) -> SchedulePlan:
    """Decide one pump for ``view``'s pool with ``free_slots`` slots free now.

    ``estimate=False`` leaves :attr:`SchedulePlan.waits` empty: the estimates are about
    a third of the cost, and a pump that only binds and preempts does not need them.
    """
    view = competing(view, policy)
    tally = Tally(view, policy)
    shares = tally.shares()
    order = dispatch_order(view, policy, tally)
    waits = estimate_waits(view, policy, order, free_slots, tally) if estimate else {}
    grants: list[Candidate] = []
    granted: set[str] = set()
    for x in order:
        if len(grants) >= free_slots:
            break
        if tally.may_take(x.cls, may_borrow(x, policy)):
            tally.take(x.cls, x.tenant)
            grants.append(x)
            granted.add(x.id)
    still = [x for x in order if x.id not in granted]
    preemptions = reclaim(view, policy, tally, still)
    return SchedulePlan(tuple(order), tuple(grants), tuple(preemptions), shares, waits)
