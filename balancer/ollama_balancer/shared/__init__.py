"""Fleet-wide state shared by every balancer replica through Redis/Valkey.

Slot leases, loads in progress, learned times, penalties, conversation
affinity and API-key quotas, behind one interface (:class:`SharedState`):

* ``protocol``  — the interface and :class:`StoreUnavailable`;
* ``local``     — this replica's own state on the :class:`Ledger` (no store);
* ``store``     — Redis/Valkey (redis-py asyncio), one script per change;
* ``connection``— its client: connect, one bounded round trip per call, scripts;
* ``fallback``  — Redis while it answers, local state when not, never failing;
* ``link``      — up or down, reconnecting, renewing and resyncing in the background;
* ``factory``   — :func:`create_shared_state` from the settings;
* ``gate``      — the fleet-wide cold-load decision lock;
* ``mirror``    — the in-memory mirror of the shared counts (pure), which hands
  routing its fleet-wide :class:`~ollama_balancer.core.occupancy.Occupancy`;
* ``model``, ``keys``, ``quota``, ``resync``, ``signals``, ``address`` — pure parts;
* ``scripts``   — the Lua;  ``metrics`` — Prometheus series.

This module imports only the pure parts, so the settings can use the address
parser without loading redis.
"""

from __future__ import annotations

from ..core.shared.model import Grant, Learned, Lease, QuotaTicket, QuotaVerdict, SlotFreed
from ..core.shared.protocol import SharedState, StoreUnavailable

__all__ = [
    "Grant",
    "Learned",
    "Lease",
    "QuotaTicket",
    "QuotaVerdict",
    "SharedState",
    "SlotFreed",
    "StoreUnavailable",
]
