"""Requests waiting in the balancer for a warm slot: classes, fair share, admission (pure).

Late binding (issue #13) holds a request here until :func:`.dispatch.dispatch`
binds it to a pod.  This module owns only the *discipline*, the order in which
waiting requests are offered to the fleet, and admission; it does no I/O, the
clock is a parameter, and the state is the explicit state of :class:`WaitQueue`.

Order, per model (every model's slots are a separate server)::

    class            (critical < standard < batch; batch that waited
                      ``batch_aging`` seconds is promoted to standard)
    virtual finish   (weighted fair queueing between tenants, on tokens)
    arrival          (ties)

Fair share is self-clocked weighted fair queueing (Golestani's SCFQ) on
*tokens*, not requests: a request of tenant *t* gets the start tag
``max(V, last_finish[t])`` and the finish tag ``start + tokens / weight``, where
``V`` is the finish tag of the last request dispatched for the model.  A tenant
that sends ten times more therefore queues ten times deeper into virtual time
and gets its weight's share of the slots, not ten times the others'; a tenant
that was idle starts at ``V`` and banks no credit.  ``last_finish`` is kept per
(class, tenant): a tenant's batch backlog does not push its critical requests
back.

A promoted batch request is tagged again, as a standard request of its tenant
arriving at that moment: it joins the end of its own tenant's standard
sequence.  (Keeping its old, small tag would let every batch request queued
half a minute ago jump the whole standard queue at once, and would give a
tenant with both batch and standard traffic two shares of the standard class.)
It is still never starved: its new tag is finite and later arrivals get later
ones.  Time moves only forward: every method taking ``now`` first promotes
what has aged by then.

Admission is bounded twice: at most ``max_per_model`` requests wait per model
(then one is shed: the newest ``batch`` request, else the newest request of
the lowest class present, which may be the arriving one) and none waits longer
than ``max_wait`` seconds (:meth:`WaitQueue.expire`).  The caller answers shed
and expired requests ``429`` with :func:`retry_after`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from ollama_wire.config import Group, SettingsError, setting

from .priority import BadPriority, Priority, parse_priority, request_priority
from .scheduling.policy import (
    DEFAULT_BATCH,
    DEFAULT_CRITICAL,
    DEFAULT_STANDARD,
    BadClassPolicy,
    SchedulerPolicy,
    class_policy_text,
    parse_class_policy,
)
from .tokens import TokenEstimate

__all__ = [
    "DEADLINE_HEADER",
    "SHARED_TENANT",
    "BadDeadline",
    "BadPriority",
    "Offer",
    "Priority",
    "QueuePolicy",
    "QueueSettings",
    "Queued",
    "WaitQueue",
    "Waiting",
    "demand",
    "expected_wait",
    "parse_deadline",
    "parse_priority",
    "request_priority",
    "retry_after",
    "tenant_of",
]

#: The tenant of requests with neither an API key nor the tenant header.
SHARED_TENANT = "-"
#: Retry-After is capped: a client should come back within the hour, not tomorrow.
MAX_RETRY_AFTER = 3600


#: A client's deadline for its answer, in seconds from now: orders it within its class.
DEADLINE_HEADER = "X-Request-Deadline"
_MAX_DEADLINE = 86400.0


class BadDeadline(ValueError):
    """An ``X-Request-Deadline`` that is not a number of seconds in (0, 86400]."""


def parse_deadline(text: str | None, now: float) -> float | None:
    """The absolute deadline ``now + seconds`` an ``X-Request-Deadline`` header asks for."""
    if text is None or not text.strip():
        return None
    try:
        seconds = float(text.strip().removesuffix("s"))
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= _MAX_DEADLINE:
        raise BadDeadline(
            f"{DEADLINE_HEADER} must be the seconds until the answer is due, "
            f"a number in (0, {_MAX_DEADLINE:g}], not {text.strip()[:40]!r}"
        )
    return now + seconds


def tenant_of(key_name: str | None, header: str | None) -> str:
    """The API key's name, else the tenant header's value (e.g. Open WebUI's user), else shared."""
    if key_name:
        return key_name
    if header is not None and header.strip():
        return header.strip()[:256]
    return SHARED_TENANT


_AGING = "queue_batch_aging, queue_hold_unavailable: must be >= 0"


class QueuePolicy(StrEnum):
    """How the wait room decides who goes next (``--queue-policy``)."""

    RECLAIM = "reclaim"
    """Class shares with lending, fair share in slot-seconds, reclaim by preemption and
    resume, fleet-wide (docs/scheduling.md)."""
    ORDER = "order"
    """Class order and token fair share per replica, no shares, no reclaim (the #13 queue)."""


_CLASS_SPEC = (
    "share=FRACTION of the pool's slots it owns, lendable=FRACTION of that others may borrow "
    "while it is idle, borrow=FRACTION of the pool it may take beyond its share, "
    "budget=SECONDS an entitled request waits before a borrowed slot is taken back, "
    "max_wait=SECONDS of estimated wait beyond which an arrival is refused 429"
)


@dataclass(frozen=True, slots=True)
class QueueSettings(Group):
    """The queue group of the balancer's settings (``settings.queue``): late binding,
    admission bounds, aging and fair share (docs/queueing.md)."""

    enabled: bool = setting(
        True,
        "late binding: hold a request in the balancer until a warm slot frees (or a cold load "
        "is the better deal) instead of queueing it inside Ollama; off (--no-queue): every "
        "request is bound to a pod on arrival",
        key="queue",
    )
    max_per_model: int = setting(
        256,
        "requests waiting per model; one more sheds the newest batch (else lowest) one",
        key="queue_max_per_model",
        ge=1,
    )
    max_wait: float = setting(
        120.0,
        "seconds a request may wait in the balancer before it is answered 429",
        key="queue_max_wait",
        unit="seconds",
        gt=0,
    )
    batch_aging: float = setting(
        30.0,
        "seconds after which a waiting batch request competes as standard",
        key="queue_batch_aging",
        unit="seconds",
        ge=0,
        invalid=_AGING,
    )
    hold_unavailable: float = setting(
        0.0,
        "seconds a request waits when no pod can serve its model (none ready, scaling up from "
        "zero) before the 503 (0 = answer at once)",
        key="queue_hold_unavailable",
        unit="seconds",
        ge=0,
        invalid=_AGING,
    )
    tenant_header: str = setting(
        "",
        "request header naming the tenant when no API key does (e.g. X-OpenWebUI-User-Id); "
        "tenants share the fleet fairly while requests wait",
    )
    default_output_tokens: int = setting(
        256, "output tokens assumed for a request that sets no limit (fair share)"
    )
    policy: QueuePolicy = setting(
        QueuePolicy.RECLAIM,
        "reclaim: class shares with lending, slot-second fair share, reclaim by preemption "
        "and resume, one order across replicas; order: class order and fair share only",
        key="queue_policy",
    )
    critical: str = setting(
        class_policy_text(DEFAULT_CRITICAL),
        f"the critical class in each model's pool: {_CLASS_SPEC}",
        key="queue_critical",
    )
    standard: str = setting(
        class_policy_text(DEFAULT_STANDARD),
        "the standard class (requests without a key or class run in it), as queue_critical",
        key="queue_standard",
    )
    batch: str = setting(
        class_policy_text(DEFAULT_BATCH), "the batch class, as queue_critical", key="queue_batch"
    )
    max_preemptions: int = setting(
        2,
        "times one request may be preempted (taken back and resumed); then it is left alone",
        key="queue_max_preemptions",
        ge=0,
    )

    def check(self) -> None:
        self.scheduler()

    def scheduler(self) -> SchedulerPolicy:
        """The scheduling policy these settings describe (``reclaim``)."""
        specs = {
            "queue_critical": (self.critical, DEFAULT_CRITICAL),
            "queue_standard": (self.standard, DEFAULT_STANDARD),
            "queue_batch": (self.batch, DEFAULT_BATCH),
        }
        parsed = {}
        for name, (text, default) in specs.items():
            try:
                parsed[name] = parse_class_policy(text, default)
            except BadClassPolicy as exc:
                raise SettingsError(f"{name}: {exc}") from None
        try:
            return SchedulerPolicy(
                critical=parsed["queue_critical"],
                standard=parsed["queue_standard"],
                batch=parsed["queue_batch"],
                max_preemptions=self.max_preemptions,
                batch_aging=self.batch_aging,
            )
        except ValueError as exc:
            raise SettingsError(f"queue classes: {exc}") from None


@dataclass(frozen=True, slots=True)
class Waiting:
    """One request held by the balancer, as the discipline and dispatch need it."""

    id: str
    model: str  # canonical key
    tenant: str
    priority: Priority = Priority.STANDARD
    tokens: int = 1  # estimated prompt + output tokens (see :mod:`.tokens`)
    weight: float = 1.0  # the tenant's share (keys file ``weight``)
    enqueued: float = 0.0
    deadline: float = math.inf  # set by :meth:`WaitQueue.offer` from ``max_wait``
    display: str = ""  # the model as the client named it, for messages
    pin: str | None = None  # X-Ollama-Backend / model@pod
    affinity_backend: str | None = None  # where this conversation went last
    num_ctx: int | None = None  # options.num_ctx: a copy loaded with another one reloads
    # ---- what the scheduler of queue_policy=reclaim needs besides (docs/scheduling.md)
    expected_seconds: float = 1.0
    """Estimated slot-seconds the request will hold (for a continuation: what is left)."""
    rates_learned: bool = True
    """``expected_seconds`` comes from the model's learned token rates, not the defaults
    (a model no answer has timed yet): admission refuses no one on a default guess."""
    estimate: TokenEstimate | None = None
    """The tokens ``expected_seconds`` was computed from, so that a guess made on the
    default rates is made again once the model's rates are learned."""
    finish_by: float | None = None
    """Absolute time (the wait room's clock) it should be done by: ``X-Request-Deadline``."""
    resumable: bool = False
    """Its API can continue a partial answer, so a slot lent to it can be taken back."""
    preemptions: int = 0
    """Times it was taken back already (a continuation waiting again)."""
    arrival: float | None = None
    """When it first arrived, for a continuation (its place among its tenant's requests)."""
    max_wait: float | None = None
    """Its key's admission limit (estimated seconds of wait), instead of its class's."""

    def waited(self, now: float) -> float:
        return max(0.0, now - self.enqueued)

    @property
    def arrived(self) -> float:
        return self.enqueued if self.arrival is None else self.arrival


@dataclass(frozen=True, slots=True)
class Queued:
    """A waiting request with the tags the queue gave it."""

    request: Waiting
    seq: int  # arrival order in this queue
    start: float  # virtual start tag
    finish: float  # virtual finish tag

    cls: Priority  # the class it competes in: its own, or standard once a batch one aged

    @property
    def promoted(self) -> bool:
        return self.cls is not self.request.priority


@dataclass(frozen=True, slots=True)
class Offer:
    """What :meth:`WaitQueue.offer` did: ``admitted`` or not, and who was shed for room.

    ``shed`` holds the request shed to make room (possibly the offered one
    itself, then ``admitted`` is false); the caller answers it 429.
    """

    admitted: bool
    shed: tuple[Waiting, ...] = ()


@dataclass(slots=True)
class _ModelQueue:
    entries: dict[str, Queued] = field(default_factory=dict)
    vclock: float = 0.0  # finish tag of the last request dispatched
    last_finish: dict[tuple[Priority, str], float] = field(default_factory=dict)


class WaitQueue:
    """Every model's waiting requests on this replica (explicit state, no I/O, no clock)."""

    def __init__(self, settings: QueueSettings | None = None) -> None:
        self.settings = settings or QueueSettings()
        self._models: dict[str, _ModelQueue] = {}
        self._where: dict[str, str] = {}  # request id -> model
        self._seq = 0

    # ---- admission
    def offer(self, request: Waiting, now: float) -> Offer:
        """Enqueue ``request`` (its ``enqueued`` and ``deadline`` are set from ``now``)."""
        if request.id in self._where:
            raise ValueError(f"request {request.id!r} is already waiting")
        if request.tokens < 1 or not request.weight > 0:
            raise ValueError("tokens must be >= 1 and weight > 0")
        self._promote(now)
        request = replace(request, enqueued=now, deadline=now + self.settings.max_wait)
        mq = self._models.setdefault(request.model, _ModelQueue())
        shed: tuple[Waiting, ...] = ()
        if len(mq.entries) >= self.settings.max_per_model:
            victim = _shed_victim([q.request for q in mq.entries.values()], request)
            if victim.id == request.id:
                return Offer(admitted=False, shed=(request,))
            self._drop(victim.id)
            shed = (victim,)
        self._seq += 1
        mq.entries[request.id] = _tag(mq, request, request.priority, self._seq)
        self._where[request.id] = request.model
        return Offer(admitted=True, shed=shed)

    def expire(self, now: float) -> tuple[Waiting, ...]:
        """Remove and return every request whose deadline has passed."""
        self._promote(now)
        gone = [
            q.request
            for mq in self._models.values()
            for q in mq.entries.values()
            if q.request.deadline <= now
        ]
        for w in gone:
            self._drop(w.id)
        return tuple(sorted(gone, key=lambda w: w.enqueued))

    def cancel(self, request_id: str) -> Waiting | None:
        """The client went away: forget it (it never reaches a pod)."""
        return self._drop(request_id)

    def take(self, request_id: str) -> Waiting:
        """Dispatch: remove the request and advance its model's virtual clock to its finish tag."""
        model = self._where.get(request_id)
        if model is None:
            raise KeyError(request_id)
        mq = self._models[model]
        q = mq.entries.pop(request_id)
        del self._where[request_id]
        mq.vclock = max(mq.vclock, q.finish)
        self._gc(model)
        return q.request

    # ---- reads
    def ordered(self, now: float, model: str | None = None) -> tuple[Waiting, ...]:
        """Waiting requests in dispatch order.

        Within a model: the discipline (class, virtual finish, arrival).  Across
        models (they compete only for the room of a cold load) the model queues
        are merged by (class, arrival) of their heads, so a critical request of
        one model is considered before a batch request of another.
        """
        self._promote(now)
        if model is not None:
            mq = self._models.get(model)
            return tuple(q.request for q in self._sorted(mq)) if mq else ()
        lanes = [self._sorted(self._models[m]) for m in sorted(self._models)]
        heads = [0] * len(lanes)
        out: list[Waiting] = []
        for _ in range(len(self._where)):
            best = min(
                (i for i in range(len(lanes)) if heads[i] < len(lanes[i])),
                key=lambda i: (
                    lanes[i][heads[i]].cls.rank,
                    lanes[i][heads[i]].request.enqueued,
                    i,
                ),
            )
            out.append(lanes[best][heads[best]].request)
            heads[best] += 1
        return tuple(out)

    def tagged(self, model: str, now: float) -> tuple[Queued, ...]:
        self._promote(now)
        mq = self._models.get(model)
        return tuple(self._sorted(mq)) if mq is not None else ()

    def position(self, request_id: str, now: float) -> int | None:
        """How many requests of the same model go before this one (0 = next)."""
        self._promote(now)
        model = self._where.get(request_id)
        if model is None:
            return None
        for i, q in enumerate(self._sorted(self._models[model])):
            if q.request.id == request_id:
                return i
        return None  # pragma: no cover - _where and entries agree

    def get(self, request_id: str) -> Waiting | None:
        model = self._where.get(request_id)
        if model is None:
            return None
        return self._models[model].entries[request_id].request

    def length(self, model: str) -> int:
        mq = self._models.get(model)
        return len(mq.entries) if mq else 0

    def __len__(self) -> int:
        return len(self._where)

    def models(self) -> list[str]:
        return sorted(self._models)

    def depth(self, now: float) -> dict[tuple[str, Priority], int]:
        """Waiting requests per (model, class competed in): the queue-length signal."""
        self._promote(now)
        out: dict[tuple[str, Priority], int] = {}
        for model, mq in self._models.items():
            for q in mq.entries.values():
                k = (model, q.cls)
                out[k] = out.get(k, 0) + 1
        return out

    def next_change(self, now: float) -> float | None:
        """When the order or membership next changes with time alone (a deadline or an aging).

        The caller's dispatcher sleeps until then if no other event wakes it.
        """
        times: list[float] = []
        for mq in self._models.values():
            for q in mq.entries.values():
                times.append(q.request.deadline)
                age_at = q.request.enqueued + self.settings.batch_aging
                if q.cls is Priority.BATCH and age_at > now:
                    times.append(age_at)
        return min(times) if times else None

    # ---- internals
    def _sorted(self, mq: _ModelQueue) -> list[Queued]:
        return sorted(mq.entries.values(), key=lambda q: (q.cls.rank, q.finish, q.seq))

    def _promote(self, now: float) -> None:
        """Batch requests that waited ``batch_aging`` seconds become standard, tagged anew."""
        aging = self.settings.batch_aging
        for mq in self._models.values():
            aged = [
                q
                for q in mq.entries.values()
                if q.cls is Priority.BATCH and q.request.waited(now) >= aging
            ]
            # In arrival order, so a tenant's aged requests keep their order among themselves.
            for q in sorted(aged, key=lambda q: q.seq):
                _untag(mq, q)
                mq.entries[q.request.id] = _tag(mq, q.request, Priority.STANDARD, q.seq)

    def _drop(self, request_id: str) -> Waiting | None:
        model = self._where.pop(request_id, None)
        if model is None:
            return None
        mq = self._models[model]
        q = mq.entries.pop(request_id)
        _untag(mq, q)
        self._gc(model)
        return q.request

    def _gc(self, model: str) -> None:
        mq = self._models[model]
        if not mq.entries:
            # An idle model forgets its tags: the next busy period starts everyone even.
            del self._models[model]


def _tag(mq: _ModelQueue, request: Waiting, cls: Priority, seq: int) -> Queued:
    key = (cls, request.tenant)
    start = max(mq.vclock, mq.last_finish.get(key, 0.0))
    finish = start + request.tokens / request.weight
    mq.last_finish[key] = finish
    return Queued(request, seq, start, finish, cls)


def _untag(mq: _ModelQueue, q: Queued) -> None:
    """A tenant's newest request leaving its class gives back the virtual time it reserved."""
    key = (q.cls, q.request.tenant)
    if mq.last_finish.get(key) == q.finish:
        mq.last_finish[key] = q.start


def _shed_victim(waiting: Iterable[Waiting], arriving: Waiting) -> Waiting:
    """Newest batch request, else the newest of the lowest class present (arrivals included)."""
    pool = [*waiting, arriving]
    lowest = max(w.priority.rank for w in pool)
    candidates = [w for w in pool if w.priority.rank == lowest]
    # ``arriving`` is the newest of all; among equals the later in the list is newer.
    return max(enumerate(candidates), key=lambda iw: (iw[1].enqueued, iw[0]))[1]


def expected_wait(position: int, service_seconds: float, slots: int) -> float:
    """Seconds until the request at ``position`` (0 = next) gets a slot.

    Slots free at ``slots / service_seconds`` per second on average, so the
    request at position *k* waits for *k + 1* of them.
    """
    return (max(0, position) + 1) * service_seconds / max(1, slots)


def retry_after(position: int, service_seconds: float, slots: int) -> int:
    """``Retry-After`` seconds for a request refused behind ``position`` waiting ones (>= 1)."""
    wait = expected_wait(position, service_seconds, slots)
    return max(1, min(MAX_RETRY_AFTER, math.ceil(wait)))


def demand(inflight: Mapping[str, int], queued: Mapping[str, int]) -> dict[str, int]:
    """Per-model demand = in flight + queued: the figure autoscalers act on."""
    return {m: inflight.get(m, 0) + queued.get(m, 0) for m in set(inflight) | set(queued)}
