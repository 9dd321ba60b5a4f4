"""What to tell the store when it comes back, and what to write back if it came back empty
(pure).

While the store was unreachable this replica went on with local state: it took
leases the store never saw, released leases the store still lists, and finished
quota tickets the store still counts.  When the store answers again, before
sharing resumes:

* every lease and ticket this replica **still holds** is (re-)registered, with a
  fresh expiry, whether the store knew it or not (the store may have restarted
  empty, or expired it meanwhile): those requests really occupy their slots;
* every lease or ticket that the store knew and this replica **gave back**
  meanwhile is removed, so its slot is not held until its TTL runs out.

A store can come back **empty** (restarted without persistence, failed over to a replica
that lagged, flushed): then the loads in progress, the loads just finished and the learned
times every replica relied on are gone too, and the next burst would start loads that are
already under way.  Each replica therefore writes back what it knows (:func:`plan_reassert`)
before it grants anything new, so the fleet's view is whole again as soon as the replicas
have reconnected, well within one renewal interval.  The store carries an *epoch* (an id
set by the first replica to find it missing, at a write-back or a refresh): a replica that
finds another epoch than the one it remembers knows the store lost its contents
(:func:`store_lost`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..occupancy import Occupancy
from .degrade import LastSeen
from .keys import Keys
from .model import Lease, QuotaTicket, field_of

__all__ = [
    "Entry",
    "LearnedClaim",
    "LoadClaim",
    "LoadedClaim",
    "ReassertPlan",
    "ResyncPlan",
    "entries_of",
    "plan_reassert",
    "plan_resync",
    "store_lost",
]


@dataclass(frozen=True, slots=True, order=True)
class Entry:
    """One sorted-set member in the store: (key, member, index field or "")."""

    key: str
    member: str
    field: str = ""


def entries_of(keys: Keys, leases: Iterable[Lease], tickets: Iterable[QuotaTicket]) -> list[Entry]:
    out = [Entry(keys.lease(*x.key), x.member, field_of(*x.key)) for x in leases]
    out += [Entry(keys.quota_inflight(t.key), t.member) for t in tickets]
    return out


@dataclass(frozen=True, slots=True)
class ResyncPlan:
    register: tuple[Entry, ...]
    remove: tuple[Entry, ...]


def plan_resync(
    keys: Keys,
    held: Mapping[str, Lease],
    tickets: Mapping[str, QuotaTicket],
    given_back: Iterable[Entry],
) -> ResyncPlan:
    """``held``/``tickets`` by member; ``given_back``: entries the store knew, since released."""
    register = sorted(set(entries_of(keys, held.values(), tickets.values())))
    live = {e.member for e in register}
    # A member still held is never removed (members are unique per attempt, but a plan
    # must not depend on that).
    remove = sorted({e for e in given_back if e.member not in live})
    return ResyncPlan(tuple(register), tuple(remove))


# ------------------------------------------------------------ a store that came back empty
@dataclass(frozen=True, slots=True)
class LoadClaim:
    """A load in progress to write back: the (pod, model) field, the lease member the
    load's first byte will clear it with, and how long ago it started (ms)."""

    field: str
    member: str
    age_ms: int


@dataclass(frozen=True, slots=True)
class LoadedClaim:
    """A load that finished ``age_ms`` ago and that the polls may not show yet."""

    field: str
    age_ms: int


@dataclass(frozen=True, slots=True)
class LearnedClaim:
    """A model's learned load and service seconds (None: not learned)."""

    model: str
    load_seconds: float | None
    service_seconds: float | None


@dataclass(frozen=True, slots=True)
class ReassertPlan:
    """What a replica writes back into a store that may have lost it, before it grants
    anything new: only entries the store lacks are written (they never overwrite)."""

    loads: tuple[LoadClaim, ...]
    loaded: tuple[LoadedClaim, ...]
    learned: tuple[LearnedClaim, ...]
    #: Members of this replica's leases that now own a re-asserted load (their first byte
    #: ends it, their release before it aborts it): followers of a load whose owner's
    #: record was lost.
    owners: frozenset[str]


def plan_reassert(
    held: Mapping[str, Lease],
    answered: Iterable[str],
    own: Occupancy,
    last: LastSeen | None,
    now: float,
    *,
    loaded_memory: float,
) -> ReassertPlan:
    """Everything this replica knows that a fresh store would not.

    ``held``: this replica's leases by member; ``answered``: members whose first byte came
    (their load, if any, is over); ``own``: its ledger's occupancy (the loads it started
    and follows, its learned times); ``last``: the fleet as the store last showed it.

    * every load in progress this replica started, and every load it follows with a
      request not yet answered (the owner may be another replica, even a dead one: its
      record comes back under the follower's lease);
    * the loads of other replicas it remembers, while they can still be under way
      (their owners write them back too, if alive: the first write wins);
    * loads finished within ``loaded_memory`` seconds, and the learned times.
    """
    done = set(answered)
    waiting: dict[tuple[str, str], Lease] = {}
    for member, lease in sorted(held.items()):
        if member not in done:
            waiting.setdefault(lease.key, lease)
    loads: dict[str, LoadClaim] = {}
    owners: set[str] = set()
    for key, rec in own.loads.items():
        loads[field_of(*key)] = LoadClaim(field_of(*key), rec.request_id, _ms(now - rec.started))
    if last is not None:
        # This replica's own loads are its ledger's to say (one that ended meanwhile is over).
        for key, rec in last.others_loads().items():
            f = field_of(*key)
            if f in loads:
                continue
            follower = waiting.get(key)
            if follower is not None:
                # A request of ours waits for this load: it vouches for it.
                loads[f] = LoadClaim(f, follower.member, _ms(now - rec.started))
                owners.add(follower.member)
            elif last.load_believed(key, rec, now):
                loads[f] = LoadClaim(f, rec.request_id, _ms(now - rec.started))
    loaded: dict[str, LoadedClaim] = {}
    for view in (last.fleet if last is not None else None, own):
        if view is None:
            continue
        for key, t in view.loaded.items():
            if now - t < loaded_memory:
                loaded[field_of(*key)] = LoadedClaim(field_of(*key), _ms(now - t))
    load_times = {**own.load_times, **(last.fleet.load_times if last else {})}
    service_times = {**own.service_times, **(last.fleet.service_times if last else {})}
    learned = tuple(
        LearnedClaim(m, load_times.get(m), service_times.get(m))
        for m in sorted(set(load_times) | set(service_times))
    )
    return ReassertPlan(
        tuple(loads[f] for f in sorted(loads)),
        tuple(loaded[f] for f in sorted(loaded)),
        learned,
        frozenset(owners),
    )


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def store_lost(remembered: str | None, current: str | None) -> bool:
    """Whether the store lost its contents since this replica last saw it: the epoch it
    remembered (None: it never saw one) is gone or another (a restart without
    persistence, a flush, a failover to a replica that never had it)."""
    return remembered is not None and current != remembered
