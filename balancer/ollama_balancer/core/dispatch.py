"""Which waiting requests go to which pod now: late binding as a pure function.

``dispatch(waiting, fleet, rng)`` walks the waiting requests in the queue's order
(:meth:`.queueing.WaitQueue.ordered`) and asks :func:`.routing.route` about each,
on a scratch copy of the :class:`~.fleetstate.FleetState` whose occupancy already
holds the requests bound earlier in the same call, and, for a request that stays,
the requests still waiting ahead of it, placed where early binding would have sent
them.  So routing's own rules decide, with routing's thresholds:

* a warm pod (model resident, or a load under way) has a **free slot** → bind;
* no free slot, and routing's expected wait (with the queue ahead of the
  request counted) is below the spill threshold → **stay queued**: the request
  waits here, visible and cancellable, not in Ollama's hidden queue;
* the expected wait is above the threshold and a pod has room → **cold load**
  there now (routing's threshold: the load time, doubled when the load evicts
  an idle model, plus one load time per load of the model already under way);
  the followers then see that pod as *loading* and take its free slots;
* a request an earlier call kept waiting (``stayed``) is past that choice: it
  keeps waiting for a warm slot, and starts a load only when no warm pod is
  left for its model (the pods it waited for went away or lost the model);
* routing answers an error → reject (a 503 may instead wait ``hold_unavailable``
  seconds: scale-from-zero hold).

A slot freeing anywhere shows up as a smaller in-flight count in the next
:class:`~.occupancy.Occupancy`, so the next call binds the head of that model's queue.

Why the spill is decided once, at arrival, as early binding decides it: a held
request routed again on every call saw its spill threshold change under it.
While the model's first copy loads, routing's threshold is two load times (the
load under way counts), so the burst arriving meanwhile stays; the moment that
load finishes the threshold drops to one load time while the burst, now queued
ahead, still counts, and the requests that had waited through the load spilled
to cold loads of their own — paying their wait *and* a load.  Measured in
``bench routing`` (bursty trace, cold start, 8 pods × 4 slots): 35 requests
of the popular model held through a 2.1 s load; when it finished, the request
at place 20 saw the warm pod's expected wait at 1.8 s against a threshold that
fell from 3 s to 1.5 s, and spilled; three more copies of that model (four
against early binding's two) followed as the learned service time rose.  Early
binding had bound those same requests to the loading pod on arrival, where
they stayed.  A request that stays still takes the first warm slot anywhere,
including one on a copy a later arrival's spill started.

Cost: one routing call per waiting request, except that a model with neither
a free slot nor a cold-load candidate is settled after its first held request,
and past ``scan_limit`` held requests of a model the rest of its queue is
probed by bisection (the requests ahead spread evenly over its warm pods, as
early binding spreads them) for the first one that should spill to a cold load.

:attr:`Binding.EARLY` is today's behaviour, kept as the benchmarks' baseline:
every request is bound on arrival to routing's first choice, free slot or not.

Pure: no I/O, the clock (the fleet state's ``now``) and the random source are
parameters, and the scratch copies are values derived from the fleet state's
occupancy (:meth:`~.occupancy.Occupancy.with_bound`), never a live ledger.  Which
pods are routable is decided once, in the fleet state, for every request of the call.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from .errors import NoBackend, NotFound, Unroutable, for_outcome
from .fleet import BackendState
from .fleetstate import FleetState
from .occupancy import Key, LoadRecord, Occupancy
from .priority import Priority
from .queueing import Waiting, expected_wait
from .rankers import COLD_REASONS, Choice, Reason, resident
from .routing import Decision, Policy, RouteRequest, route

__all__ = [
    "Bind",
    "Binding",
    "Dispatch",
    "Reject",
    "dispatch",
    "warm_pods",
]

_NO_FLOATS: Mapping[str, float] = MappingProxyType({})
_NO_LOADS: Mapping[Key, LoadRecord] = MappingProxyType({})
_NO_INTS: Mapping[str, int] = MappingProxyType({})


class Binding(StrEnum):
    """When a request is bound to a pod (the balancer's ``--queue off|on``)."""

    EARLY = "early"  # on arrival, to routing's first choice (Ollama queues it)
    LATE = "late"  # when a slot frees or a cold load is the better deal


@dataclass(frozen=True, slots=True)
class Bind:
    """Send request ``id`` to ``backend`` now; ``ranked`` is the failover order (it first)."""

    id: str
    model: str
    backend: str
    reason: Reason  # routing's
    ranked: tuple[Choice, ...]
    waited: float  # seconds it spent queued (X-Queue-Wait)
    cls: Priority | None = None  # the class it was bound in, if not its own (a batch one aged)
    warm: int = 0  # pods warm for its model (resident or loading) when a cold load was decided

    @property
    def cold(self) -> bool:
        """The request starts a load (the ledger records it as the loader)."""
        return self.reason in COLD_REASONS


@dataclass(frozen=True, slots=True)
class Reject:
    id: str
    outcome: Unroutable  # why it cannot be placed; the edge picks the status (for_outcome)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The decision: binds and rejects in queue order; everyone else keeps waiting.

    ``expected_wait`` is each still-waiting request's expected seconds to a
    slot (:func:`.queueing.expected_wait` over the model's warm slots): the
    expected-wait signal, and the base of ``Retry-After``.
    """

    binds: tuple[Bind, ...] = ()
    rejects: tuple[Reject, ...] = ()
    expected_wait: Mapping[str, float] = field(default_factory=lambda: _NO_FLOATS)

    @property
    def held(self) -> tuple[str, ...]:
        return tuple(self.expected_wait)


def dispatch(
    waiting: Sequence[Waiting],
    fleet: FleetState,
    rng: random.Random,
    *,
    binding: Binding = Binding.LATE,
    policy: Policy | None = None,
    hold_unavailable: float = 0.0,
    scan_limit: int = 32,
    stayed: AbstractSet[str] = frozenset(),
    ahead: Mapping[str, int] = _NO_INTS,
) -> Dispatch:
    """Decide for every waiting request (in the given order): bind, reject or keep waiting.

    ``stayed``: ids of requests an earlier call kept waiting; they bind only to a warm
    slot, or to a cold load when no warm pod of their model is left (the module docstring).
    ``ahead``: per request, how many requests of its model that other balancer replicas
    hold wait ahead of it in the fleet-wide order (the shared board's).  They are placed
    on the warm pods as early binding would have placed them, so that a spill weighs the
    whole fleet's queue, not only this replica's share of it.
    """
    policy = policy or Policy()
    now, base = fleet.now, fleet.occupancy
    scratch = fleet  # ``fleet`` with every request bound or placed so far in this call
    taken: dict[Key, int] = dict(base.held)  # real requests, and those bound here
    binds: list[Bind] = []
    rejects: list[Reject] = []
    waits: dict[str, float] = {}
    held: dict[str, int] = {}  # model -> requests kept waiting so far in this call
    # Models for which nothing can change further down the queue this call: no free
    # slot and no cold-load candidate, so every later unpinned request stays.
    stuck: set[str] = set()
    scanned: dict[str, int] = {}  # model -> held requests routed one by one
    deferred: dict[str, list[Waiting]] = {}  # model -> held past scan_limit, not yet routed
    warm_slots: dict[str, int] = {}  # model -> slots on warm pods (a bind may add a pod)
    others: dict[str, int] = {}  # model -> other replicas' waiters placed in scratch so far

    def place_others(w: Waiting) -> None:
        """Queue on the warm pods the other replicas' requests waiting ahead of ``w``."""
        nonlocal scratch
        more = ahead.get(w.id, 0) - others.get(w.model, 0)
        if more > 0:
            scratch = _spread(scratch, w.model, more)
            others[w.model] = others.get(w.model, 0) + more

    def begin(backend: str, model: str, cold: bool, rid: str) -> None:
        nonlocal scratch
        key = (backend, model)
        loads = {key: LoadRecord(now, rid)} if cold else _NO_LOADS
        scratch = scratch.with_occupancy(scratch.occupancy.with_bound({key: 1}, loads))

    def bind(w: Waiting, choice: Choice, ranked: Sequence[Choice]) -> None:
        others = tuple(c for c in ranked if c.backend != choice.backend)
        warm = warm_pods(scratch, w.model) if choice.reason in COLD_REASONS else 0
        b = Bind(
            w.id,
            w.model,
            choice.backend,
            choice.reason,
            (choice, *others),
            w.waited(now),
            warm=warm,
        )
        binds.append(b)
        begin(b.backend, w.model, b.cold, w.id)
        key = (b.backend, w.model)
        taken[key] = taken.get(key, 0) + 1
        warm_slots.pop(w.model, None)

    def hold(w: Waiting) -> None:
        k = held.get(w.model, 0)
        held[w.model] = k + 1
        slots = warm_slots.get(w.model)
        if slots is None:
            slots = warm_slots[w.model] = _warm_slots(scratch, w.model)
        waits[w.id] = (
            expected_wait(k + ahead.get(w.id, 0), base.service_seconds(w.model), slots)
            if slots
            else base.load_seconds(w.model)
        )

    for w in waiting:
        if binding is Binding.LATE and w.pin is None and w.model in stuck:
            hold(w)
            continue
        if binding is Binding.LATE and w.pin is None and scanned.get(w.model, 0) >= scan_limit:
            hold(w)
            deferred.setdefault(w.model, []).append(w)
            continue
        if binding is Binding.LATE and w.pin is None:
            place_others(w)
        req = RouteRequest(
            w.model, w.display or w.model, w.pin, w.affinity_backend, num_ctx=w.num_ctx
        )
        decision = route(req, scratch, policy, rng)
        if decision.unroutable is not None or not decision.ranked:
            outcome = decision.unroutable or NoBackend()
            unavailable = not isinstance(for_outcome(outcome), NotFound)
            if binding is Binding.LATE and unavailable and w.waited(now) < hold_unavailable:
                hold(w)  # scale-from-zero: a pod may come
            else:
                rejects.append(Reject(w.id, outcome))
            continue
        ranked = decision.ranked
        if binding is Binding.EARLY:
            bind(w, ranked[0], ranked)
            continue
        free = _first_free(ranked, scratch, w.model, taken)
        warm = _first_warm(ranked, scratch, w.model)
        if free is not None:
            bind(w, free, ranked)
        elif _cold_pin(ranked[0], scratch, w.model) or (
            ranked[0].reason in COLD_REASONS and (w.id not in stayed or warm is None)
        ):
            bind(w, ranked[0], ranked)
        else:
            hold(w)
            # Where early binding would have put it: the requests behind see it queued there.
            begin((warm or ranked[0]).backend, w.model, False, w.id)
            if w.pin is None:
                scanned[w.model] = scanned.get(w.model, 0) + 1
            if (
                w.pin is None
                and not any(c.reason is Reason.COLD_LOAD for c in ranked)
                and _first_free(ranked, scratch, w.model, taken, no_later_than_first=False) is None
            ):
                stuck.add(w.model)
    for model, rest in deferred.items():
        if model in stuck:
            continue
        # Only a request deciding for the first time may spill (those that stayed keep
        # waiting); its place in the whole deferred tail is what its probe counts ahead.
        fresh = [j for j, w in enumerate(rest) if w.id not in stayed]
        if not fresh:
            continue

        def probe(j: int, rest: list[Waiting] = rest, model: str = model) -> Decision:
            """Routing's decision for ``rest[j]`` with everything ahead of it queued."""
            w = rest[j]
            req = RouteRequest(
                w.model, w.display or w.model, None, w.affinity_backend, num_ctx=w.num_ctx
            )
            queued = j + max(0, ahead.get(w.id, 0) - others.get(model, 0))
            return route(req, _spread(scratch, model, queued), policy, rng)

        def spills(d: Decision) -> bool:
            return d.unroutable is None and bool(d.ranked) and d.ranked[0].reason in COLD_REASONS

        last = probe(fresh[-1])
        if not spills(last):
            continue
        # spills(fresh[hi]); bisect over the fresh places for the first that does
        lo, hi, found = -1, len(fresh) - 1, last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            d = probe(fresh[mid])
            if spills(d):
                hi, found = mid, d
            else:
                lo = mid
        w = rest[fresh[hi]]
        del waits[w.id]
        bind(w, found.ranked[0], found.ranked)  # the next call fills the new pod's other slots
    return Dispatch(tuple(binds), tuple(rejects), MappingProxyType(waits))


def _spread(fleet: FleetState, model: str, count: int) -> FleetState:
    """``fleet`` with ``count`` virtual requests queued on the model's warm pods, least loaded
    per slot first."""
    occ = fleet.occupancy
    heap: list[tuple[float, str, int]] = [
        (occ.inflight(s.name, model) / max(1, s.backend.slots), s.name, max(1, s.backend.slots))
        for s in fleet.routable
        if _warm(s, model, occ)
    ]
    if not heap:
        return fleet
    heapq.heapify(heap)
    added: dict[Key, int] = {}
    for _ in range(count):
        load, name, slots = heapq.heappop(heap)
        added[(name, model)] = added.get((name, model), 0) + 1
        heapq.heappush(heap, (load + 1 / slots, name, slots))
    return fleet.with_occupancy(occ.with_bound(added))


def _warm(state: BackendState, model: str, occ: Occupancy) -> bool:
    """Resident (by the poll or a load finished since), or a load under way."""
    return resident(state, model, occ) or occ.loading(state.name, model) is not None


def _first_free(
    ranked: Sequence[Choice],
    fleet: FleetState,
    model: str,
    taken: Mapping[Key, int],
    *,
    no_later_than_first: bool = True,
) -> Choice | None:
    """The first warm choice with a slot nobody holds.

    Only a choice expected to serve no later than routing's first one counts
    (a loading pod's free slot is no bargain when a busy warm pod frees
    sooner), and a penalised pod only when every choice is penalised.
    """
    occ, penalised = fleet.occupancy, fleet.penalised
    healthy = any(c.backend not in penalised for c in ranked)
    for c in ranked:
        if no_later_than_first and c.wait > ranked[0].wait:
            continue
        if c.reason is Reason.RELOAD:  # a copy of another num_ctx: Ollama would reload it
            continue
        state = fleet.get(c.backend)
        if state is None or not _warm(state, model, occ):
            continue
        if healthy and c.backend in penalised:
            continue
        if taken.get((c.backend, model), 0) < max(1, state.backend.slots):
            return c
    return None


def _first_warm(ranked: Sequence[Choice], fleet: FleetState, model: str) -> Choice | None:
    """Routing's best choice among the pods warm for ``model`` (resident or loading)."""
    occ = fleet.occupancy
    for c in ranked:
        state = fleet.get(c.backend)
        if c.reason is not Reason.RELOAD and state is not None and _warm(state, model, occ):
            return c
    return None


def _cold_pin(choice: Choice, fleet: FleetState, model: str) -> bool:
    """A pinned request to a pod without the model: the client asked for that load."""
    state = fleet.get(choice.backend)
    return (
        choice.reason is Reason.NAMED
        and state is not None
        and not _warm(state, model, fleet.occupancy)
    )


def warm_pods(fleet: FleetState, model: str) -> int:
    """How many routable pods hold ``model`` warm: resident, or a load under way."""
    return sum(1 for s in fleet.routable if _warm(s, model, fleet.occupancy))


def _warm_slots(fleet: FleetState, model: str) -> int:
    return sum(max(1, s.backend.slots) for s in fleet.routable if _warm(s, model, fleet.occupancy))
