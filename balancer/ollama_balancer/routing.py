"""Which backend serves a request: a pure function of (request, snapshot, ledger, clock, rng).

Filters → scores → a ranked list, so failover needs no second decision
(GIE's scheduler profile).  Expected wait in seconds is the score:

* resident with a free slot: 0;
* resident and busy: the queued rounds ahead × the model's service time;
* loading (a load this replica started): the load's remaining time, plus queue;
* installed only: the model's load time (a cold load).

A warm pod wins unless its expected wait exceeds the model's load time (twice
that when the load would evict an idle model, and once more for every load of
the model already under way, so bursts do not cascade); then
the model is loaded on an installed pod that has VRAM room without evicting a
model that is serving requests.  Never two loads of one model because two
requests arrived together: a loading pod is "warm" for followers.

Penalised backends (failed fast recently) keep their place only behind every
healthy choice.  Ties are broken by the injected :class:`random.Random`, so
several balancer replicas do not herd onto the same pod.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .fleet import BackendState, FleetSnapshot
from .ledger import Ledger

__all__ = [
    "Choice",
    "Decision",
    "Policy",
    "RouteError",
    "RouteRequest",
    "route",
]

RESIDENT = "resident"
LOADING = "loading"
COLD_LOAD = "cold-load"
PINNED = "pinned"
AFFINITY = "affinity"
PULL = "pull"


@dataclass(frozen=True, slots=True)
class Policy:
    fail_threshold: int = 3
    stale_after: float = 15.0
    affinity_bound: float = 1.25
    auto_pull: bool = False
    residency: bool = True  # False = plain least-connections (benchmarks' baseline)
    # Benchmarks' baselines: "least-connections" is residency=False; "round-robin" and
    # "random" ignore both residency and load.  "residency" is the product's policy.
    strategy: str = "residency"


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str  # canonical key
    display: str  # the name as the client sent it, for messages
    pin: str | None = None  # backend name from X-Ollama-Backend / model@NAME
    affinity_backend: str | None = None  # where this conversation went last


@dataclass(frozen=True, slots=True)
class Choice:
    backend: str
    reason: str
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteError:
    status: int
    message: str
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    ranked: tuple[Choice, ...] = ()
    error: RouteError | None = None


@dataclass(slots=True)
class _Candidate:
    state: BackendState
    reason: str
    wait: float
    room: int  # 2 = fits in free VRAM, 1 = by evicting idle models, 0 = only by a busy eviction
    free: int
    load: float  # in-flight for this model per slot
    tie: float


def route(
    req: RouteRequest,
    snapshot: FleetSnapshot,
    ledger: Ledger,
    policy: Policy,
    now: float,
    rng: random.Random,
    turn: int = 0,
) -> Decision:
    """``turn`` (a per-replica request counter) only feeds the round-robin baseline."""
    routable = [
        s for s in snapshot.backends if s.routable(now, policy.fail_threshold, policy.stale_after)
    ]
    if req.pin is not None:
        return _pinned(req, snapshot, routable)

    holders = [s for s in routable if _holds(s, req.model, ledger)]
    if not holders:
        down = [
            s.name
            for s in snapshot.backends
            if s not in routable and (s.has_installed(req.model) or s.resident_model(req.model))
        ]
        if down:
            return Decision(
                error=RouteError(
                    503,
                    f"model '{req.display}' is unavailable: every pod holding it is down "
                    f"({', '.join(sorted(down))})",
                    retry_after=5,
                )
            )
        if policy.auto_pull and routable:
            target = max(
                routable,
                key=lambda s: (
                    _room_left(s, ledger),
                    -ledger.backend_inflight(s.name),
                    rng.random(),
                ),
            )
            return Decision(ranked=(Choice(target.name, PULL),))
        if not routable:
            return Decision(error=RouteError(503, "no Ollama backend is available", retry_after=5))
        return Decision(error=RouteError(404, f"model '{req.display}' not found"))

    if policy.strategy == "round-robin":
        rr = sorted(holders, key=lambda s: s.name)
        k = turn % len(rr)
        rr = rr[k:] + rr[:k]
        return Decision(ranked=tuple(Choice(s.name, "round-robin") for s in rr))
    if policy.strategy == "random":
        shuffled = list(holders)
        rng.shuffle(shuffled)
        return Decision(ranked=tuple(Choice(s.name, "random") for s in shuffled))
    if not policy.residency or policy.strategy == "least-connections":
        return _least_connections(holders, ledger, rng)

    size = _model_size(req.model, snapshot)
    load_time = ledger.load_seconds(req.model)
    service = ledger.service_seconds(req.model)
    warm: list[_Candidate] = []
    cold: list[_Candidate] = []
    for s in holders:
        slots = max(1, s.backend.slots)
        n = ledger.inflight(s.name, req.model)
        tie = rng.random()
        free = _free_vram(s, ledger)
        if _resident(s, req.model, ledger):
            wait = 0.0 if n < slots else ((n - slots) // slots + 1) * service
            warm.append(_Candidate(s, RESIDENT, wait, 2, free, n / slots, tie))
        elif (rec := ledger.loading(s.name, req.model)) is not None:
            remaining = max(0.0, load_time - (now - rec.started))
            wait = remaining + (max(0, n - slots) // slots) * service
            warm.append(_Candidate(s, LOADING, wait, 2, free, n / slots, tie))
        else:
            room = _room(s, size, free, req.model, ledger)
            cold.append(
                _Candidate(s, COLD_LOAD, load_time + n * service, room, free, n / slots, tie)
            )

    warm.sort(key=lambda c: (c.wait, c.load, c.tie))
    cold.sort(key=lambda c: (-c.room, -c.free, ledger.backend_inflight(c.state.name), c.tie))

    best_warm = warm[0] if warm else None
    roomy_cold = [c for c in cold if c.room > 0]
    # Spilling to a cold pod costs a load.  It costs more when it must evict an idle model
    # (that model's next request pays a load too) and when a load of this model is already
    # under way elsewhere, so that a burst does not start a cascade of copies and evictions.
    threshold = load_time
    if roomy_cold:
        under_way = sum(1 for c in warm if c.reason == LOADING)
        evicts = roomy_cold[0].room == 1 and roomy_cold[0].state.backend.vram_bytes > 0
        threshold = load_time * (1 + under_way + (1 if evicts else 0))
    if best_warm is not None and (best_warm.wait <= threshold or not roomy_cold):
        ordered = warm + cold
    else:
        ordered = roomy_cold + warm + [c for c in cold if c.room == 0]

    ranked = [Choice(c.state.name, c.reason, c.wait) for c in ordered]
    if req.affinity_backend is not None:
        ranked = _apply_affinity(req.affinity_backend, warm, ranked, policy.affinity_bound)
    return Decision(ranked=_demote_penalised(ranked, ledger, now))


def _holds(s: BackendState, model: str, ledger: Ledger) -> bool:
    return (
        s.has_installed(model)
        or s.resident_model(model) is not None
        or ledger.loading(s.name, model) is not None
    )


def _resident(s: BackendState, model: str, ledger: Ledger) -> bool:
    if s.resident_model(model) is not None:
        return True
    # A load this replica finished after the last good poll: /api/ps just hasn't caught up.
    done = ledger.loaded_at(s.name, model)
    return done is not None and (s.last_ok is None or done > s.last_ok)


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


def _free_vram(s: BackendState, ledger: Ledger) -> int:
    if s.backend.vram_bytes <= 0:
        return 0
    loading = sum(
        s.installed[m].size for m in ledger.loading_sizes().get(s.name, []) if m in s.installed
    )
    return s.backend.vram_bytes - s.vram_used - loading


def _room_left(s: BackendState, ledger: Ledger) -> int:
    """Free VRAM when the capacity is known, else minus what is resident (less is roomier)."""
    if s.backend.vram_bytes > 0:
        return _free_vram(s, ledger)
    return -s.vram_used


def _room(s: BackendState, size: int, free: int, model: str, ledger: Ledger) -> int:
    if s.backend.vram_bytes <= 0:
        return 1  # capacity unknown: Ollama decides, we only know it isn't loaded
    if size <= free:
        return 2
    idle = sum(
        r.size_vram or r.size
        for key, r in s.resident.items()
        if key != model and ledger.inflight(s.name, key) == 0
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
    return [Choice(target, AFFINITY, match.wait), *rest]


def _demote_penalised(ranked: list[Choice], ledger: Ledger, now: float) -> tuple[Choice, ...]:
    ok = [c for c in ranked if not ledger.penalised(c.backend, now)]
    bad = [c for c in ranked if ledger.penalised(c.backend, now)]
    return tuple(ok + bad)


def _pinned(
    req: RouteRequest, snapshot: FleetSnapshot, routable: Sequence[BackendState]
) -> Decision:
    state = snapshot.get(req.pin or "")
    if state is None:
        known = ", ".join(snapshot.names()) or "none"
        return Decision(
            error=RouteError(404, f"backend '{req.pin}' is not in the fleet (known: {known})")
        )
    if state not in routable:
        return Decision(
            error=RouteError(503, f"backend '{req.pin}' is not available", retry_after=5)
        )
    return Decision(ranked=(Choice(state.name, PINNED),))


def _least_connections(
    holders: Sequence[BackendState], ledger: Ledger, rng: random.Random
) -> Decision:
    """Baseline for benchmarks: fewest in-flight requests, residency ignored."""
    keyed = sorted(holders, key=lambda s: (ledger.backend_inflight(s.name), rng.random()))
    return Decision(ranked=tuple(Choice(s.name, "least-connections") for s in keyed))
