"""The scheduler that makes room: class shares with lending, fair share, order, reclaim (pure).

Per **pool** (one model's warm slots across the fleet), the scheduler decides
on every pump who takes the free slots and whose slot is taken back:

* ``policy``   — :class:`ClassPolicy` per class (nominal share, lendable part,
  borrow limit, wait budget, maximum wait) and :class:`SchedulerPolicy`, with
  defaults that need no configuration;
* ``view``     — the input: :class:`PoolView` of :class:`Holder` (slots in use)
  and :class:`Candidate` (waiting requests), fleet-wide;
* ``shares``   — nominal seats, lending and borrowing (:class:`ClassShare`);
* ``fairness`` — the per-tenant counters in slot-seconds (:func:`charge_dispatch`,
  :func:`charge_completion`, :func:`lift`) and Jain's index;
* ``order``    — the dispatch order (tenants by counter, shortest work first with
  aging, deadlines);
* ``reclaim``  — victims (:class:`Preemption`);
* ``estimate`` — waits and admission (:func:`admit`, :class:`Admission`);
* ``planner``  — one pump: :func:`plan` → :class:`SchedulePlan`.

No I/O and no clock: ``now`` is in the view; ties are broken by ids, so a
plan is a function of its inputs.  docs/scheduling.md tells the whole story
with a worked example.
"""

from .estimate import Admission, admit
from .fairness import charge_completion, charge_dispatch, jain, lift, weighted_jain
from .planner import SchedulePlan, plan
from .policy import ClassPolicy, SchedulerPolicy
from .reclaim import Preemption, Reason
from .shares import ClassShare, seats
from .view import Candidate, Holder, PoolView, TenantKey

__all__ = [
    "Admission",
    "Candidate",
    "ClassPolicy",
    "ClassShare",
    "Holder",
    "PoolView",
    "Preemption",
    "Reason",
    "SchedulePlan",
    "SchedulerPolicy",
    "TenantKey",
    "admit",
    "charge_completion",
    "charge_dispatch",
    "jain",
    "lift",
    "plan",
    "seats",
    "weighted_jain",
]
