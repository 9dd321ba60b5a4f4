"""Rankers: given the pods that hold a model, the order in which to try them (pure).

The product's policy is :func:`residency`; the others are the named baselines the
benchmarks compare it with (docs/design.md §2.3: filters → scorers → a ranked list, so a
retry needs no second decision).  Each ranker is a pure function of a :class:`Ranking`.

Residency scores expected wait in seconds:

* resident with a free slot: 0;
* resident and busy: the queued rounds ahead × the model's service time;
* loading (a load this replica started): the load's remaining time, plus the rounds ahead
  as if resident;
* installed only: the model's load time (a cold load).

A warm pod wins unless its expected wait exceeds the model's load time (twice
that when the load would evict an idle model, and once more for every load of
the model already under way, so bursts do not cascade); then the model is
loaded on an installed pod that has VRAM room without evicting a model that is
serving requests.  Never two loads of one model because two requests arrived
together: a loading pod is "warm" for followers.  Penalised backends (failed
fast recently) keep their place only behind every healthy choice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .fleet import BackendState, FleetSnapshot
from .fleetstate import FleetState
from .occupancy import Occupancy

__all__ = [
    "COLD_REASONS",
    "RANKERS",
    "Choice",
    "Ranking",
    "Reason",
    "Strategy",
    "holds",
    "least_connections",
    "mismatched",
    "random_order",
    "residency",
    "resident",
    "round_robin",
]


class Reason(StrEnum):
    """Why a pod was chosen (the ``X-Route-Reason`` header and the ``reason`` label)."""

    RESIDENT = "resident"
    LOADING = "loading"
    COLD_LOAD = "cold-load"
    NAMED = "named"  # the pod a client named (model@pod, X-Ollama-Backend); was "pinned"
    AFFINITY = "affinity"
    PULL = "pull"
    RELOAD = "reload"  # resident with other runner options (num_ctx): Ollama reloads it
    UNLOAD = "unload"  # an unload request, sent to every pod holding the model
    LEAST_CONNECTIONS = "least-connections"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


#: Reasons that make the pod load the model first (counted and timed as cold loads).
COLD_REASONS = frozenset({Reason.COLD_LOAD, Reason.PULL, Reason.RELOAD})


class Strategy(StrEnum):
    """The ``routing_policy`` setting: the product's ranker, or a benchmark baseline."""

    RESIDENCY = "residency"
    LEAST_CONNECTIONS = "least-connections"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class Choice:
    backend: str
    reason: Reason
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a ranker may look at: routable holders of ``model``, and the fleet state (the
    snapshot, the balancer's own counts, the clock) they were chosen from."""

    model: str  # canonical key
    holders: Sequence[BackendState]
    fleet: FleetState
    rng: random.Random
    turn: int = 0  # a per-replica request counter (round-robin's cursor)
    affinity_backend: str | None = None
    affinity_bound: float = 1.25
    num_ctx: int | None = None  # the request's runner context; None = any copy will do
    load_only: bool = False  # a load request: refresh a warm copy rather than load another


Ranker = Callable[[Ranking], tuple[Choice, ...]]


@dataclass(slots=True)
class _Candidate:
    state: BackendState
    reason: Reason
    wait: float
    room: int  # 2 = fits in free VRAM, 1 = by evicting idle models, 0 = only by a busy eviction
    free: int
    load: float  # in-flight for this model per slot
    tie: float


def residency(r: Ranking) -> tuple[Choice, ...]:
    """The product's policy: warm and free first, then the shortest wait against a load."""
    req_model, occ, now, rng = r.model, r.fleet.occupancy, r.fleet.now, r.rng
    size = _model_size(req_model, r.fleet.snapshot)
    load_time = occ.load_seconds(req_model)
    service = occ.service_seconds(req_model)
    warm: list[_Candidate] = []
    cold: list[_Candidate] = []
    for s in r.holders:
        slots = max(1, s.backend.slots)
        n = occ.inflight(s.name, req_model)
        tie = rng.random()
        free = _free_vram(s, occ)
        matching = resident(s, req_model, occ) and not mismatched(s, req_model, r.num_ctx)
        if matching or _fresh_load(s, req_model, occ):
            wait = 0.0 if n < slots else ((n - slots) // slots + 1) * service
            warm.append(_Candidate(s, Reason.RESIDENT, wait, 2, free, n / slots, tie))
        elif (rec := occ.loading(s.name, req_model)) is not None:
            remaining = max(0.0, load_time - (now - rec.started))
            # Once loaded, the pod serves like a resident one: the same rounds ahead.
            wait = remaining + (0.0 if n < slots else ((n - slots) // slots + 1) * service)
            warm.append(_Candidate(s, Reason.LOADING, wait, 2, free, n / slots, tie))
        elif s.resident_model(req_model) is not None:
            # Another num_ctx: Ollama drains this copy's requests, then reloads it.  Like a
            # load that evicts an idle model; never a choice above a free pod, and last of
            # all while the copy serves other requests (a reload would stall them).
            room = 1 if n == 0 else 0
            wait = load_time + n * service
            cold.append(_Candidate(s, Reason.RELOAD, wait, room, free, n / slots, tie))
        else:
            room = _room(s, size, free, req_model, occ)
            cold.append(
                _Candidate(s, Reason.COLD_LOAD, load_time + n * service, room, free, n / slots, tie)
            )

    warm.sort(key=lambda c: (c.wait, c.load, c.tie))
    cold.sort(key=lambda c: (-c.room, -c.free, occ.backend_inflight(c.state.name), c.tie))

    best_warm = warm[0] if warm else None
    roomy_cold = [c for c in cold if c.room > 0]
    # Spilling to a cold pod costs a load.  It costs more when it must evict an idle model
    # (that model's next request pays a load too) and when a load of this model is already
    # under way elsewhere, so that a burst does not start a cascade of copies and evictions.
    threshold = load_time
    if roomy_cold:
        under_way = sum(1 for c in warm if c.reason is Reason.LOADING)
        evicts = roomy_cold[0].room == 1 and roomy_cold[0].state.backend.vram_bytes > 0
        threshold = load_time * (1 + under_way + (1 if evicts else 0))
    if best_warm is not None and r.load_only:
        ordered = warm  # a warm copy's keep_alive is refreshed: no second copy for a preload
    elif best_warm is not None and (best_warm.wait <= threshold or not roomy_cold):
        ordered = warm + cold
    else:
        ordered = roomy_cold + warm + [c for c in cold if c.room == 0]

    ranked = [Choice(c.state.name, c.reason, c.wait) for c in ordered]
    if r.affinity_backend is not None:
        ranked = _apply_affinity(r.affinity_backend, warm, ranked, r.affinity_bound)
    return _demote_penalised(ranked, r.fleet.penalised)


def least_connections(r: Ranking) -> tuple[Choice, ...]:
    """Baseline: fewest in-flight requests on the pod, residency ignored."""
    occupancy = r.fleet.occupancy
    keyed = sorted(r.holders, key=lambda s: (occupancy.backend_inflight(s.name), r.rng.random()))
    return tuple(Choice(s.name, Reason.LEAST_CONNECTIONS) for s in keyed)


def round_robin(r: Ranking) -> tuple[Choice, ...]:
    """Baseline: the holders in turn, ignoring residency and load."""
    rr = sorted(r.holders, key=lambda s: s.name)
    k = r.turn % len(rr)
    return tuple(Choice(s.name, Reason.ROUND_ROBIN) for s in rr[k:] + rr[:k])


def random_order(r: Ranking) -> tuple[Choice, ...]:
    """Baseline: a random holder, ignoring residency and load."""
    shuffled = list(r.holders)
    r.rng.shuffle(shuffled)
    return tuple(Choice(s.name, Reason.RANDOM) for s in shuffled)


RANKERS: dict[Strategy, Ranker] = {
    Strategy.RESIDENCY: residency,
    Strategy.LEAST_CONNECTIONS: least_connections,
    Strategy.ROUND_ROBIN: round_robin,
    Strategy.RANDOM: random_order,
}


def mismatched(s: BackendState, model: str, num_ctx: int | None) -> bool:
    """The resident copy runs with another context than the request asks for (0: unknown)."""
    res = s.resident_model(model)
    return (
        num_ctx is not None
        and res is not None
        and res.context_length > 0
        and res.context_length != num_ctx
    )


def holds(s: BackendState, model: str, occ: Occupancy) -> bool:
    return (
        s.has_installed(model)
        or s.resident_model(model) is not None
        or occ.loading(s.name, model) is not None
    )


def resident(s: BackendState, model: str, occ: Occupancy) -> bool:
    if s.resident_model(model) is not None:
        return True
    # A load this replica finished after the last good poll: /api/ps just hasn't caught up.
    done = occ.loaded_at(s.name, model)
    return done is not None and (s.last_ok is None or done > s.last_ok)


def _fresh_load(s: BackendState, model: str, occ: Occupancy) -> bool:
    """A load this replica finished after the last good poll (so /api/ps may show the old copy)."""
    done = occ.loaded_at(s.name, model)
    return done is not None and s.last_ok is not None and done > s.last_ok


def _model_size(model: str, snapshot: FleetSnapshot) -> int:
    """VRAM a load will take: a resident copy's size anywhere, else the size on disk."""
    on_disk = 0
    for s in snapshot.backends:
        res = s.resident.get(model)
        if res is not None and res.size:
            return res.size
        inst = s.installed.get(model)
        if inst is not None:
            on_disk = max(on_disk, inst.size)
    return on_disk


def _free_vram(s: BackendState, occ: Occupancy) -> int:
    if s.backend.vram_bytes <= 0:
        return 0
    loading = sum(s.installed[m].size for m in occ.loading_on(s.name) if m in s.installed)
    # A load that finished after the last poll takes VRAM that /api/ps does not show yet:
    # without it the pod looks roomy and the next cold load there makes Ollama evict.
    fresh = sum(
        s.installed[m].size
        for m, _ in occ.loaded_on(s.name)
        if m in s.installed and m not in s.resident and _fresh_load(s, m, occ)
    )
    return s.backend.vram_bytes - s.vram_used - loading - fresh


def room_left(s: BackendState, occ: Occupancy) -> int:
    """Free VRAM when the capacity is known, else minus what is resident (less is roomier)."""
    if s.backend.vram_bytes > 0:
        return _free_vram(s, occ)
    return -s.vram_used


def _room(s: BackendState, size: int, free: int, model: str, occ: Occupancy) -> int:
    if s.backend.vram_bytes <= 0:
        return 1  # capacity unknown: Ollama decides, we only know it isn't loaded
    if size <= free:
        return 2
    idle = sum(
        r.size_vram or r.size
        for key, r in s.resident.items()
        if key != model and occ.inflight(s.name, key) == 0
    )
    return 1 if size <= free + idle else 0


def _apply_affinity(
    target: str, warm: Sequence[_Candidate], ranked: list[Choice], bound: float
) -> list[Choice]:
    match = next((c for c in warm if c.state.name == target), None)
    if match is None or not warm:
        return ranked
    mean = sum(c.load for c in warm) / len(warm)
    # +1: the request being routed; keeps an idle fleet (mean 0) from vetoing affinity.
    if match.load + 1 > bound * (mean + 1):
        return ranked
    rest = [c for c in ranked if c.backend != target]
    return [Choice(target, Reason.AFFINITY, match.wait), *rest]


def _demote_penalised(ranked: list[Choice], penalised: frozenset[str]) -> tuple[Choice, ...]:
    if not penalised:
        return tuple(ranked)
    ok = [c for c in ranked if c.backend not in penalised]
    bad = [c for c in ranked if c.backend in penalised]
    return tuple(ok + bad)
