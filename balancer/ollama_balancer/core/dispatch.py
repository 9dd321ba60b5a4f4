"""Which waiting requests go to which pod now: late binding as a pure function.

``dispatch(waiting, snapshot, occupancy, now, rng)`` walks the waiting requests
in the queue's order (:meth:`.queueing.WaitQueue.ordered`) and asks
:func:`.routing.route` about each, on a scratch ledger that already holds the
requests bound earlier in the same call, and, for a request that stays, the
requests still waiting ahead of it, placed where early binding would have sent
them.  So routing's own rules decide, with routing's thresholds:

* a warm pod (model resident, or a load under way) has a **free slot** → bind;
* no free slot, and routing's expected wait (with the queue ahead of the
  request counted) is below the spill threshold → **stay queued**: the request
  waits here, visible and cancellable, not in Ollama's hidden queue;
* the expected wait is above the threshold and a pod has room → **cold load**
  there now (routing's threshold: the load time, doubled when the load evicts
  an idle model, plus one load time per load of the model already under way);
  the followers then see that pod as *loading* and take its free slots;
* routing answers an error → reject (a 503 may instead wait ``hold_unavailable``
  seconds: scale-from-zero hold).

A slot freeing anywhere shows up as a smaller in-flight count in the next
:class:`Occupancy`, so the next call binds the head of that model's queue.

Cost: one routing call per waiting request, except that a model with neither
a free slot nor a cold-load candidate is settled after its first held request,
and past ``scan_limit`` held requests of a model the rest of its queue is
probed by bisection (the requests ahead spread evenly over its warm pods, as
early binding spreads them) for the first one that should spill to a cold load.

:attr:`Binding.EARLY` is today's behaviour, kept as the benchmarks' baseline:
every request is bound on arrival to routing's first choice, free slot or not.

Pure: no I/O, the clock and the random source are parameters, and the scratch
ledger is built from the :class:`Occupancy` value, never the live one.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from .errors import NoBackend, NotFound, Unroutable, for_outcome
from .fleet import BackendState, FleetSnapshot
from .ledger import Ledger, LedgerView
from .queueing import Waiting, expected_wait
from .rankers import COLD_REASONS, Choice, Reason
from .routing import Decision, Policy, RouteRequest, route

__all__ = [
    "Bind",
    "Binding",
    "Dispatch",
    "Occupancy",
    "Reject",
    "dispatch",
]

Key = tuple[str, str]  # (backend name, canonical model)
_NO_KEYS: Mapping[Key, int] = MappingProxyType({})
_NO_TIMES: Mapping[Key, float] = MappingProxyType({})
_NO_FLOATS: Mapping[str, float] = MappingProxyType({})


class Binding(StrEnum):
    """When a request is bound to a pod (the balancer's ``--queue off|on``)."""

    EARLY = "early"  # on arrival, to routing's first choice (Ollama queues it)
    LATE = "late"  # when a slot frees or a cold load is the better deal


@dataclass(frozen=True, slots=True)
class Occupancy:
    """What the fleet is doing, beyond the snapshot: the ledger's figures as a value.

    With shared state these are fleet-wide (every replica's leases); without,
    this replica's own.
    """

    inflight: Mapping[Key, int] = field(default_factory=lambda: _NO_KEYS)
    loading: Mapping[Key, float] = field(default_factory=lambda: _NO_TIMES)
    """Loads in progress: (pod, model) -> when the load started."""
    loaded: Mapping[Key, float] = field(default_factory=lambda: _NO_TIMES)
    """Loads finished after the pod's last poll (``/api/ps`` not caught up yet)."""
    penalised: Mapping[str, float] = field(default_factory=lambda: _NO_FLOATS)
    """Pod -> end of its cool-down after a fast failure."""
    load_seconds: Mapping[str, float] = field(default_factory=lambda: _NO_FLOATS)
    service_seconds: Mapping[str, float] = field(default_factory=lambda: _NO_FLOATS)
    default_load_seconds: float = 20.0
    default_service_seconds: float = 5.0

    def service(self, model: str) -> float:
        return self.service_seconds.get(model, self.default_service_seconds)

    def load(self, model: str) -> float:
        return self.load_seconds.get(model, self.default_load_seconds)

    def holding(self, held: Mapping[Key, int]) -> Occupancy:
        """These figures with ``held`` more requests in flight (bound, lease not yet taken)."""
        if not held:
            return self
        inflight = dict(self.inflight)
        for key, n in held.items():
            inflight[key] = inflight.get(key, 0) + n
        return replace(self, inflight=inflight)

    @classmethod
    def from_ledger(
        cls, ledger: LedgerView, snapshot: FleetSnapshot, models: Iterable[str] = ()
    ) -> Occupancy:
        """This replica's ledger as a value (``models``: whose finished loads to carry over)."""
        view = ledger.snapshot()
        inflight = {
            (str(r["backend"]), str(r["model"])): int(_num(r["count"]))
            for r in _rows(view, "inflight")
        }
        loading = {
            (str(r["backend"]), str(r["model"])): _num(r["started"]) for r in _rows(view, "loading")
        }
        loaded: dict[Key, float] = {}
        for name in snapshot.names():
            for model in models:
                at = ledger.loaded_at(name, model)
                if at is not None:
                    loaded[(name, model)] = at
        return cls(
            inflight=inflight,
            loading=loading,
            loaded=loaded,
            penalised=_floats(view.get("penalties")),
            load_seconds=_floats(view.get("load_seconds")),
            service_seconds=_floats(view.get("service_seconds")),
            default_load_seconds=ledger.default_load_seconds,
            default_service_seconds=ledger.default_service_seconds,
        )


@dataclass(frozen=True, slots=True)
class Bind:
    """Send request ``id`` to ``backend`` now; ``ranked`` is the failover order (it first)."""

    id: str
    model: str
    backend: str
    reason: Reason  # routing's
    ranked: tuple[Choice, ...]
    waited: float  # seconds it spent queued (X-Queue-Wait)

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
    snapshot: FleetSnapshot,
    occupancy: Occupancy,
    now: float,
    rng: random.Random,
    *,
    binding: Binding = Binding.LATE,
    policy: Policy | None = None,
    hold_unavailable: float = 0.0,
    scan_limit: int = 32,
) -> Dispatch:
    """Decide for every waiting request (in the given order): bind, reject or keep waiting."""
    policy = policy or Policy()
    led = _scratch_ledger(occupancy)
    ops: list[tuple[str, str, bool, str]] = []  # begins on ``led`` since it was built
    taken: dict[Key, int] = dict(occupancy.inflight)  # real requests, and those bound here
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

    def begin(backend: str, model: str, cold: bool, rid: str) -> None:
        led.begin(backend, model, cold=cold, now=now, request_id=rid)
        ops.append((backend, model, cold, rid))

    def bind(w: Waiting, choice: Choice, ranked: Sequence[Choice]) -> None:
        others = tuple(c for c in ranked if c.backend != choice.backend)
        b = Bind(w.id, w.model, choice.backend, choice.reason, (choice, *others), w.waited(now))
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
            slots = warm_slots[w.model] = _warm_slots(snapshot, w.model, led, now, policy)
        waits[w.id] = (
            expected_wait(k, occupancy.service(w.model), slots)
            if slots
            else occupancy.load(w.model)
        )

    for w in waiting:
        if binding is Binding.LATE and w.pin is None and w.model in stuck:
            hold(w)
            continue
        if binding is Binding.LATE and w.pin is None and scanned.get(w.model, 0) >= scan_limit:
            hold(w)
            deferred.setdefault(w.model, []).append(w)
            continue
        req = RouteRequest(w.model, w.display or w.model, w.pin, w.affinity_backend)
        decision = route(req, snapshot, led, policy, now, rng)
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
        free = _first_free(ranked, snapshot, w.model, taken, led, now)
        if free is not None:
            bind(w, free, ranked)
        elif ranked[0].reason in COLD_REASONS or _cold_pin(ranked[0], snapshot, w.model, led):
            bind(w, ranked[0], ranked)
        else:
            hold(w)
            # Where early binding would have put it: the requests behind see it queued there.
            begin(ranked[0].backend, w.model, False, w.id)
            if w.pin is None:
                scanned[w.model] = scanned.get(w.model, 0) + 1
            if (
                w.pin is None
                and not any(c.reason is Reason.COLD_LOAD for c in ranked)
                and _first_free(
                    ranked, snapshot, w.model, taken, led, now, no_later_than_first=False
                )
                is None
            ):
                stuck.add(w.model)
    for model, rest in deferred.items():
        if model in stuck:
            continue

        def probe(j: int, rest: list[Waiting] = rest, model: str = model) -> Decision:
            """Routing's decision for ``rest[j]`` with everything ahead of it queued."""
            scratch = _scratch_ledger(occupancy)
            for backend, m, cold, rid in ops:
                scratch.begin(backend, m, cold=cold, now=now, request_id=rid)
            _spread(scratch, snapshot, model, j, now, policy)
            w = rest[j]
            req = RouteRequest(w.model, w.display or w.model, None, w.affinity_backend)
            return route(req, snapshot, scratch, policy, now, rng)

        def spills(d: Decision) -> bool:
            return d.unroutable is None and bool(d.ranked) and d.ranked[0].reason in COLD_REASONS

        last = probe(len(rest) - 1)
        if not spills(last):
            continue
        lo, hi, found = -1, len(rest) - 1, last  # spills(hi); bisect for the first that does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            d = probe(mid)
            if spills(d):
                hi, found = mid, d
            else:
                lo = mid
        w = rest[hi]
        del waits[w.id]
        bind(w, found.ranked[0], found.ranked)  # the next call fills the new pod's other slots
    return Dispatch(tuple(binds), tuple(rejects), MappingProxyType(waits))


def _spread(
    led: Ledger, snapshot: FleetSnapshot, model: str, count: int, now: float, policy: Policy
) -> None:
    """Queue ``count`` virtual requests on the model's warm pods, least loaded per slot first."""
    heap: list[tuple[float, str, int]] = [
        (led.inflight(s.name, model) / max(1, s.backend.slots), s.name, max(1, s.backend.slots))
        for s in snapshot.backends
        if s.routable(now, policy.fail_threshold, policy.stale_after) and _warm(s, model, led)
    ]
    if not heap:
        return
    heapq.heapify(heap)
    for i in range(count):
        load, name, slots = heapq.heappop(heap)
        led.begin(name, model, cold=False, now=now, request_id=f"ahead:{i}")
        heapq.heappush(heap, (load + 1 / slots, name, slots))


def _scratch_ledger(occ: Occupancy) -> Ledger:
    """A private :class:`Ledger` holding ``occ``, built through the ledger's own API."""
    led = Ledger(occ.default_load_seconds, occ.default_service_seconds)
    for model, seconds in occ.load_seconds.items():
        led.learn_load(model, seconds)
    for model, seconds in occ.service_seconds.items():
        led.learn_service(model, seconds)
    for (backend, model), at in occ.loaded.items():
        rid = f"loaded:{backend}:{model}"
        led.begin(backend, model, cold=True, now=at, request_id=rid)
        led.first_byte(backend, model, now=at, request_id=rid)
        led.end(backend, model, request_id=rid)
    for key in sorted(set(occ.inflight) | set(occ.loading)):
        backend, model = key
        n = occ.inflight.get(key, 0)
        if key in occ.loading:
            # The loader is one of the in-flight requests (the ledger counts it so).
            led.begin(backend, model, cold=True, now=occ.loading[key], request_id=f"load:{key}")
            n -= 1
        for _ in range(max(0, n)):
            led.begin(backend, model, cold=False, now=0.0, request_id="")
    for backend, until in occ.penalised.items():
        led.penalise(backend, until)
    return led


def _warm(state: BackendState, model: str, led: Ledger) -> bool:
    """Resident (by the poll or a load finished since), or a load under way."""
    if state.resident_model(model) is not None or led.loading(state.name, model) is not None:
        return True
    done = led.loaded_at(state.name, model)
    return done is not None and (state.last_ok is None or done > state.last_ok)


def _first_free(
    ranked: Sequence[Choice],
    snapshot: FleetSnapshot,
    model: str,
    taken: Mapping[Key, int],
    led: Ledger,
    now: float,
    *,
    no_later_than_first: bool = True,
) -> Choice | None:
    """The first warm choice with a slot nobody holds.

    Only a choice expected to serve no later than routing's first one counts
    (a loading pod's free slot is no bargain when a busy warm pod frees
    sooner), and a penalised pod only when every choice is penalised.
    """
    healthy = any(not led.penalised(c.backend, now) for c in ranked)
    for c in ranked:
        if no_later_than_first and c.wait > ranked[0].wait:
            continue
        state = snapshot.get(c.backend)
        if state is None or not _warm(state, model, led):
            continue
        if healthy and led.penalised(c.backend, now):
            continue
        if taken.get((c.backend, model), 0) < max(1, state.backend.slots):
            return c
    return None


def _cold_pin(choice: Choice, snapshot: FleetSnapshot, model: str, led: Ledger) -> bool:
    """A pinned request to a pod without the model: the client asked for that load."""
    state = snapshot.get(choice.backend)
    return choice.reason is Reason.PINNED and state is not None and not _warm(state, model, led)


def _warm_slots(
    snapshot: FleetSnapshot, model: str, led: Ledger, now: float, policy: Policy
) -> int:
    return sum(
        max(1, s.backend.slots)
        for s in snapshot.backends
        if s.routable(now, policy.fail_threshold, policy.stale_after) and _warm(s, model, led)
    )


def _rows(view: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    rows = view.get(key)
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _floats(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
