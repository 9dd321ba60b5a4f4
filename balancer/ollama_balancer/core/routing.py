"""Which backend serves a request: a pure function of (request, fleet state, policy, rng).

The :class:`~ollama_balancer.core.fleetstate.FleetState` carries the snapshot, the
occupancy, the clock and the routable pods (decided there once, for every request a
decision routes).  Filters first (routable pods; a pinned pod; the pods that hold the
model), then the policy's ranker (:mod:`rankers`) orders the holders.  A request that
cannot be placed gets a domain outcome (:data:`~ollama_balancer.core.errors.Unroutable`),
never an HTTP status: the edge chooses statuses
(:func:`~ollama_balancer.core.errors.for_outcome`).  Ties are broken by the injected
:class:`random.Random`, so several balancer replicas do not herd onto the same pod.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ollama_wire.config import Group, SettingsError, setting
from ollama_wire.names import InvalidModelName, canonical

from .errors import HoldersDown, NoBackend, NoSuchModel, PinDown, PinUnknown, Unroutable
from .fleetstate import FleetState
from .rankers import RANKERS, Choice, Ranking, Reason, Strategy, holds, room_left

__all__ = ["Decision", "Policy", "RouteRequest", "route"]


@dataclass(frozen=True, slots=True)
class Policy(Group):
    """The routing group of the balancer's settings (``settings.routing``): which pods
    count as routable, how holders are ranked, and what is assumed until measured."""

    fail_threshold: int = setting(
        3, "failed polls in a row before a backend leaves the routing set", ge=1
    )
    stale_after: float = setting(
        15.0, "seconds after which a backend's last good poll is no longer trusted", unit="seconds"
    )
    default_load_seconds: float = setting(
        20.0, "assumed cold-load time of a model until one is measured", unit="seconds", gt=0
    )
    default_service_seconds: float = setting(
        5.0, "assumed request duration of a model until one is measured", unit="seconds", gt=0
    )
    affinity: bool = setting(True, "send requests of one conversation/session to the same pod")
    affinity_bound: float = setting(
        1.25, "affinity is ignored when its pod is loaded above this × the mean", ge=1
    )
    auto_pull: bool = setting(False, "pull a model that no pod has, instead of answering 404")
    strategy: Strategy = setting(
        Strategy.RESIDENCY,
        "residency | least-connections | round-robin | random (the last three are "
        "model-unaware baselines for benchmarks; they bind early whatever queue says)",
        key="routing_policy",
    )
    penalty_seconds: float = setting(
        10.0, "cool-down for a backend that failed fast (refused, 5xx)", unit="seconds"
    )
    pin_num_ctx: tuple[str, ...] = setting(
        (),
        "MODEL=NUM_CTX pairs, comma-separated in env/flags: every request for MODEL runs with "
        "that options.num_ctx (a client's own is rewritten), so clients cannot make Ollama "
        "reload a pinned copy with another context",
    )
    allow_client_unload: bool = setting(
        False,
        "let clients unload copies pinned forever (keep_alive -1, e.g. by a ModelPool); "
        "other copies are always unloadable",
    )

    def check(self) -> None:
        self.num_ctx_pins()

    def num_ctx_pins(self) -> dict[str, int]:
        """``pin_num_ctx`` as {canonical model: num_ctx}."""
        out: dict[str, int] = {}
        for item in self.pin_num_ctx:
            model, sep, value = item.rpartition("=")
            try:
                if not sep or not model.strip():
                    raise ValueError("expected MODEL=NUM_CTX")
                ctx = int(value)
                if ctx <= 0:
                    raise ValueError("num_ctx must be > 0")
                out[canonical(model.strip())] = ctx
            except (ValueError, InvalidModelName) as exc:
                raise SettingsError(f"pin_num_ctx: {item!r}: {exc}") from None
        return out


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str  # canonical key
    display: str  # the name as the client sent it, for messages
    pin: str | None = None  # backend name from X-Ollama-Backend / model@NAME
    affinity_backend: str | None = None  # where this conversation went last
    num_ctx: int | None = None  # options.num_ctx (after a pin): a copy with another reloads
    load_only: bool = False  # a preload (empty prompt): a warm copy is refreshed, not doubled


@dataclass(frozen=True, slots=True)
class Decision:
    ranked: tuple[Choice, ...] = ()
    unroutable: Unroutable | None = None


def route(
    req: RouteRequest,
    fleet: FleetState,
    policy: Policy,
    rng: random.Random,
    turn: int = 0,
) -> Decision:
    """``turn`` (a per-replica request counter) only feeds the round-robin baseline."""
    if req.pin is not None:
        return _pinned(req.pin, fleet)
    occupancy = fleet.occupancy
    holders = [s for s in fleet.routable if holds(s, req.model, occupancy)]
    if not holders:
        return _nowhere(req, fleet, policy, rng)
    ranking = Ranking(
        req.model,
        holders,
        fleet,
        rng,
        turn,
        req.affinity_backend,
        policy.affinity_bound,
        req.num_ctx,
        req.load_only,
    )
    return Decision(ranked=RANKERS[policy.strategy](ranking))


def _nowhere(req: RouteRequest, fleet: FleetState, policy: Policy, rng: random.Random) -> Decision:
    """No routable pod holds the model: it is down, to be pulled, or unknown."""
    routable, occupancy = fleet.routable, fleet.occupancy
    down = tuple(
        s.name
        for s in fleet.backends
        if not fleet.is_routable(s.name)
        and (s.has_installed(req.model) or s.resident_model(req.model))
    )
    if down:
        return Decision(unroutable=HoldersDown(req.display, down))
    if policy.auto_pull and routable:
        target = max(
            routable,
            key=lambda s: (
                room_left(s, occupancy),
                -occupancy.backend_inflight(s.name),
                rng.random(),
            ),
        )
        return Decision(ranked=(Choice(target.name, Reason.PULL),))
    if not routable:
        return Decision(unroutable=NoBackend())
    return Decision(unroutable=NoSuchModel(req.display))


def _pinned(pin: str, fleet: FleetState) -> Decision:
    state = fleet.get(pin)
    if state is None:
        return Decision(unroutable=PinUnknown(pin, tuple(fleet.snapshot.names())))
    if not fleet.is_routable(pin):
        return Decision(unroutable=PinDown(pin))
    return Decision(ranked=(Choice(state.name, Reason.NAMED),))
