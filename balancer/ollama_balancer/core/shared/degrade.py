"""What a replica believes of the fleet while the shared store is away (pure).

Until the store answers again a replica counts its own requests in its ledger.  Alone,
those counts make every other replica's work invisible: a pod busy with their requests
looks free, a load another replica started a moment ago looks like nothing, and the next
request for that model starts a second load elsewhere.  How much of the fleet the replica
keeps believing in is the degrade policy (``shared_state_degrade``):

* ``alone`` — its own counts only (the behaviour before issue #24);
* ``remember`` — its own counts plus the fleet as the store last showed it
  (:class:`LastSeen`): the other replicas' requests in flight, for as long as their leases
  would live; their loads in progress, for as long as such a load takes; loads that
  finished, until the polls must have seen them; penalties; the fleet's learned times;
* ``hold`` — ``remember``, and a cold-load decision first waits a moment
  (``shared_state_degraded_hold``) for the store to come back and decide it with the
  whole fleet's view (most outages are a restart or a failover: a second or two).

``bench/faults.py`` measures them on the same trace (docs/benchmarks.md): the default is
the one that came out best.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..occupancy import Key, LoadRecord, Occupancy
from .mirror import LOADED_MEMORY

__all__ = ["Degrade", "DegradedViews", "LastSeen", "degraded_view"]

#: A remembered load of another replica is believed for at most this many times the
#: model's (learned) load time, and never less than ``MIN_LOAD_MEMORY`` seconds.
LOAD_MEMORY_FACTOR = 2.0
MIN_LOAD_MEMORY = 5.0


class Degrade(StrEnum):
    """How a replica counts the fleet while the store is unreachable."""

    ALONE = "alone"
    REMEMBER = "remember"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class LastSeen:
    """The fleet as the mirror last showed it, and this replica's own part of it then."""

    fleet: Occupancy
    own: Occupancy
    at: float
    """Local clock when the store was lost."""
    replica: str
    """This replica's id: members ``<replica>/...`` are its own leases."""

    def others_held(self) -> dict[Key, int]:
        out: dict[Key, int] = {}
        for key, n in self.fleet.held.items():
            rest = n - self.own.held.get(key, 0)
            if rest > 0:
                out[key] = rest
        return out

    def others_loads(self) -> dict[Key, LoadRecord]:
        mine = self.replica + "/"
        return {
            key: rec
            for key, rec in self.fleet.loads.items()
            if not rec.request_id.startswith(mine) and key not in self.own.loads
        }

    def load_believed(self, key: Key, rec: LoadRecord, now: float) -> bool:
        """Whether a remembered load is plausibly still under way at ``now``."""
        span = max(MIN_LOAD_MEMORY, LOAD_MEMORY_FACTOR * self.fleet.load_seconds(key[1]))
        return now - rec.started < span


def degraded_view(
    local: Occupancy, last: LastSeen | None, now: float, *, lease_ttl: float
) -> Occupancy:
    """This replica's counts (``local``) with what it remembers of the others'.

    ``lease_ttl``: how long another replica's in-flight request is believed after the
    store went away (its lease would have expired by then had its replica died)."""
    if last is None:
        return local
    held = dict(local.held)
    if now - last.at < lease_ttl:
        for key, n in last.others_held().items():
            held[key] = held.get(key, 0) + n
    loads = dict(local.loads)
    for key, rec in last.others_loads().items():
        if key not in loads and last.load_believed(key, rec, now):
            loads[key] = rec
    loaded = {k: t for k, t in last.fleet.loaded.items() if now - t < LOADED_MEMORY}
    loaded.update(local.loaded)
    penalties = {p: u for p, u in last.fleet.penalties.items() if u > now}
    for pod, until in local.penalties.items():
        penalties[pod] = max(until, penalties.get(pod, until))
    # The fleet's learned times come from every replica's requests; this replica's own
    # fill in the models the fleet had not learned yet.
    load_times = {**local.load_times, **last.fleet.load_times}
    service_times = {**local.service_times, **last.fleet.service_times}
    return Occupancy(
        held=held,
        loads=loads,
        loaded=loaded,
        penalties=penalties,
        load_times=load_times,
        service_times=service_times,
        default_load_seconds=local.default_load_seconds,
        default_service_seconds=local.default_service_seconds,
    )


class DegradedViews:
    """The view ``policy`` gives (:func:`degraded_view`, or the local counts alone), built
    again only when the local counts change (the ledger hands out a new value then) or a
    quarter of a second passed (memories age)."""

    TICKS_PER_SECOND = 4

    def __init__(self, policy: Degrade, *, lease_ttl: float) -> None:
        self.policy = policy
        self.lease_ttl = lease_ttl
        self._cached: tuple[Occupancy, LastSeen | None, int, Occupancy] | None = None

    def view(self, local: Occupancy, last: LastSeen | None, now: float) -> Occupancy:
        if self.policy is Degrade.ALONE:
            return local
        tick = int(now * self.TICKS_PER_SECOND)
        cached = self._cached
        if cached is not None and cached[0] is local and cached[1] is last and cached[2] == tick:
            return cached[3]
        view = degraded_view(local, last, now, lease_ttl=self.lease_ttl)
        self._cached = (local, last, tick, view)
        return view
