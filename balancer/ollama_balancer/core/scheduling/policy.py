"""The scheduler's settings: each class's share of a pool's slots, its budgets, and the defaults.

A *pool* is one model's warm slots across the fleet: every parallel slot
(``OLLAMA_NUM_PARALLEL``) of every pod where the model is resident or loading.
Each class owns a **nominal** share of those slots, as Kubernetes API Priority
and Fairness gives each priority level nominal seats; it may **lend** the part
of its share it does not use, and **borrow** idle seats of other classes up to
a limit.  Borrowed seats come back by preemption (see :mod:`.reclaim`), so the
lender waits at most its **wait budget** plus the time a cancelled generation
takes to let go of its slot.

Why the defaults are what they are (they must work with no configuration):

* **Nominal 0.2 / 0.6 / 0.2** (critical / standard / batch).  Every request
  without a key runs as standard, so standard owns most of the pool; critical
  keeps a fifth, enough for interactive traffic that is a small part of the
  load, and batch keeps a fifth so that it progresses under sustained
  interactive load instead of starving.  On a pool of 8 slots that is
  2 / 5 / 1 seats (largest remainder, :func:`.shares.seats`).
* **Lendable 1.0 for every class.**  A seat lent away is not lost: reclaim takes
  it back within the lender's wait budget, and long work that cannot resume is
  never lent a seat (``unresumable_borrow`` below), so everything a borrower
  holds is either short or resumable.  A lower value keeps part of a share idle
  for its owner (a hard floor, as APF's ``lendablePercent``); it costs that part
  of the pool whenever the owner is idle.
* **Borrow limit 1.0** (of the pool) for every class: an idle pool serves
  whoever is there, so the policy is work-conserving by default.
* **Wait budget 0.5 s critical, 1 s standard, 10 s batch.**  A light
  interactive request takes about a second alone; waiting at most about as
  long again (budget + cancel latency) keeps its time to first token within
  twice its time alone, the target the issue sets.  Batch tolerates seconds, and
  each preemption costs the victim a re-prefill, so batch reclaims late.
* **Max wait 120 s critical and standard, 300 s batch** (admission: beyond the
  estimate a request is refused ``429`` with ``Retry-After``).  120 s matches the
  wait room's ``max_wait``, well under usual client timeouts; batch clients are
  scripts with long timeouts (the OpenAI SDK waits 600 s), and 300 s leaves them
  room for the generation itself.
* **Two preemptions per request at most**: a request taken back twice is then
  left alone, so heavy work still finishes (the issue's bound).
* **Aging 1.0**: a request's place within its tenant is its arrival plus one
  second per expected slot-second, so shorter work goes first but a long
  request is overtaken only by requests that arrive less than its own length
  after it, never starved.
* **Unresumable borrow 1 s**: work that cannot continue a partial answer, and is
  expected to hold a slot longer than the standard wait budget, waits for its
  own class's seats; a lender would otherwise wait for it to end or throw its
  whole work away.
* **Batch aging** (the queue's ``queue_batch_aging``, 30 s): a batch request that
  has waited that long since it arrived competes as standard — in standard's order,
  for standard's seats — so that batch's own fifth of the pool is not all it gets for
  the length of an overload: without it, batch's tail (and with it the whole pool's
  TTFT p99) was 1.5–1.7× early binding's in ``bench saturation``.
* **Cancel latency 0.2 s**: Ollama stops a generating request within about one
  token of the client closing, plus the teardown; the admission estimate of a
  request that reclaims a seat adds it to the wait budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..priority import Priority

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CRITICAL",
    "DEFAULT_STANDARD",
    "BadClassPolicy",
    "ClassPolicy",
    "SchedulerPolicy",
    "class_policy_text",
    "parse_class_policy",
]


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """One class's share of a pool and its budgets (fractions of the pool, seconds)."""

    nominal: float
    """Share of the pool's slots the class owns, 0..1 (the three are scaled to sum to 1)."""
    lendable: float = 1.0
    """Part of the nominal share, 0..1, others may borrow while the class leaves it idle."""
    borrow_limit: float = 1.0
    """Most the class may hold beyond its nominal seats, as a fraction of the pool's slots."""
    max_wait: float = 120.0
    """Seconds of estimated wait beyond which an arrival is refused (429), unless entitled."""
    wait_budget: float = 1.0
    """Seconds an entitled request waits for a slot to free by itself before one is reclaimed."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.nominal <= 1.0:
            raise ValueError("nominal must be within 0..1")
        if not 0.0 <= self.lendable <= 1.0:
            raise ValueError("lendable must be within 0..1")
        if not self.borrow_limit >= 0.0:
            raise ValueError("borrow_limit must be >= 0")
        if not self.max_wait > 0.0:
            raise ValueError("max_wait must be > 0 (math.inf: never refuse)")
        if not (self.wait_budget >= 0.0 and math.isfinite(self.wait_budget)):
            raise ValueError("wait_budget must be a finite number >= 0")


DEFAULT_CRITICAL = ClassPolicy(nominal=0.2, max_wait=120.0, wait_budget=0.5)
DEFAULT_STANDARD = ClassPolicy(nominal=0.6, max_wait=120.0, wait_budget=1.0)
DEFAULT_BATCH = ClassPolicy(nominal=0.2, max_wait=300.0, wait_budget=10.0)


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """The three classes' policies and the knobs of order and reclaim (defaults: module doc)."""

    critical: ClassPolicy = DEFAULT_CRITICAL
    standard: ClassPolicy = DEFAULT_STANDARD
    batch: ClassPolicy = DEFAULT_BATCH
    max_preemptions: int = 2
    """A request preempted this many times is never preempted again."""
    aging: float = 1.0
    """Seconds of precedence a request loses per expected slot-second (shortest first, aged)."""
    unresumable_borrow: float = 1.0
    """Seconds: non-resumable work expected to hold a slot longer may not borrow seats."""
    cancel_latency: float = 0.2
    """Seconds from a preemption to the victim's slot being free (admission estimates)."""
    batch_aging: float = math.inf
    """Seconds after its arrival at which a waiting batch request competes as standard (its
    order, its seats; bound so, it holds a standard seat): the queue's ``batch_aging``."""

    def __post_init__(self) -> None:
        if sum(self.of(c).nominal for c in Priority) <= 0.0:
            raise ValueError("at least one class needs a nominal share > 0")
        if self.max_preemptions < 0:
            raise ValueError("max_preemptions must be >= 0")
        if not self.aging >= 0.0:
            raise ValueError("aging must be >= 0")
        if not self.unresumable_borrow >= 0.0:
            raise ValueError("unresumable_borrow must be >= 0 (math.inf: lend to all)")
        if not (self.cancel_latency >= 0.0 and math.isfinite(self.cancel_latency)):
            raise ValueError("cancel_latency must be a finite number >= 0")
        if not self.batch_aging >= 0.0:
            raise ValueError("batch_aging must be >= 0 (math.inf: never)")

    def with_max_wait(self, cls: Priority, seconds: float) -> SchedulerPolicy:
        """This policy with class ``cls``'s admission limit set to ``seconds`` (a key's own)."""
        changed = replace(self.of(cls), max_wait=seconds)
        if cls is Priority.CRITICAL:
            return replace(self, critical=changed)
        if cls is Priority.STANDARD:
            return replace(self, standard=changed)
        return replace(self, batch=changed)

    def of(self, cls: Priority) -> ClassPolicy:
        if cls is Priority.CRITICAL:
            return self.critical
        if cls is Priority.STANDARD:
            return self.standard
        return self.batch


_FIELDS = {
    "share": "nominal",
    "nominal": "nominal",
    "lendable": "lendable",
    "borrow": "borrow_limit",
    "borrow_limit": "borrow_limit",
    "budget": "wait_budget",
    "wait_budget": "wait_budget",
    "max_wait": "max_wait",
}


class BadClassPolicy(ValueError):
    """A class spec that does not parse (the message says which part, and what is allowed)."""


def parse_class_policy(text: str, base: ClassPolicy) -> ClassPolicy:
    """``share=0.2,lendable=1,borrow=1,budget=0.5,max_wait=120`` over ``base``.

    Every part is optional (an empty text is ``base``); ``max_wait=inf`` never refuses.
    Raises :class:`BadClassPolicy` naming the part that is wrong.
    """
    values: dict[str, float] = {}
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        field = _FIELDS.get(name.strip().lower())
        if not sep or field is None:
            allowed = "share, lendable, borrow, budget, max_wait"
            raise BadClassPolicy(f"{part!r}: expected NAME=VALUE with NAME one of {allowed}")
        try:
            value = float(raw.strip().removesuffix("s"))
        except ValueError:
            raise BadClassPolicy(f"{part!r}: {raw.strip()!r} is not a number") from None
        values[field] = value
    try:
        return ClassPolicy(
            nominal=values.get("nominal", base.nominal),
            lendable=values.get("lendable", base.lendable),
            borrow_limit=values.get("borrow_limit", base.borrow_limit),
            max_wait=values.get("max_wait", base.max_wait),
            wait_budget=values.get("wait_budget", base.wait_budget),
        )
    except ValueError as exc:
        raise BadClassPolicy(str(exc)) from None


def class_policy_text(p: ClassPolicy) -> str:
    """The spec :func:`parse_class_policy` reads back as ``p`` (for ``--help`` and docs)."""
    return (
        f"share={p.nominal:g},lendable={p.lendable:g},borrow={p.borrow_limit:g},"
        f"budget={p.wait_budget:g},max_wait={p.max_wait:g}"
    )
