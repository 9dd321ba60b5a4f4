"""What to tell the store when it comes back (pure).

While the store was unreachable this replica went on with local state: it took
leases the store never saw, released leases the store still lists, and finished
quota tickets the store still counts.  When the store answers again, before
sharing resumes:

* every lease and ticket this replica **still holds** is (re-)registered, with a
  fresh expiry, whether the store knew it or not (the store may have restarted
  empty, or expired it meanwhile): those requests really occupy their slots;
* every lease or ticket that the store knew and this replica **gave back**
  meanwhile is removed, so its slot is not held until its TTL runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .keys import Keys
from .model import Lease, QuotaTicket, field_of

__all__ = ["Entry", "ResyncPlan", "entries_of", "plan_resync"]


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
