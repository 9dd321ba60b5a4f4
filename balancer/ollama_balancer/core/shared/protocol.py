"""The one interface the request path talks to, whatever keeps the state.

Three implementations:

* :class:`~ollama_balancer.core.shared.local.LocalState` — this replica's own
  counts (today's per-replica semantics, on the :class:`Ledger`); used when
  ``shared_state`` is empty (one replica only) and as the fallback;
* :class:`~ollama_balancer.shared.store.RedisState` — fleet-wide counts in
  Redis/Valkey; its operations raise :class:`StoreUnavailable` on any fault;
* :class:`~ollama_balancer.shared.fallback.FallbackState` — what the balancer
  runs with a ``shared_state`` URL: Redis while it answers, local state the
  moment it does not (never an exception), leases re-registered when it is back.

Reads (``occupancy``, ``affinity``) are synchronous and never touch the
network: routing stays a pure function of a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..auth import ApiKey
from ..occupancy import Occupancy
from .board import Board, Charge, Reservation, SlotHolder, Waiter
from .model import Grant, Learned, Lease, QuotaTicket, QuotaVerdict, SlotFreed

__all__ = ["SharedState", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The shared store did not answer in time (or at all); the message says how."""


class SharedState(Protocol):
    # ---- reads: synchronous, no I/O
    def occupancy(self) -> Occupancy:
        """In-flight counts, loads in progress, penalties and learned times, as a value
        (fleet-wide while the store serves, else this replica's)."""
        ...

    def affinity(self, key: str) -> str | None:
        """The pod the conversation ``key`` went to last, fleet-wide, if remembered."""
        ...

    def status(self) -> dict[str, object]:
        """For ``/-/fleet`` and logs: mode (local | shared | fallback), store, since, errors."""
        ...

    def board(self) -> Board:
        """The scheduler's board: whose every lease is, who waits, the fair-share counters,
        reclaims under way (fleet-wide with a store)."""
        ...

    # ---- slots
    async def acquire(
        self,
        pod: str,
        model: str,
        *,
        slots: int,
        request_id: str,
        cold: bool = False,
        overflow: bool = False,
        holder: SlotHolder | None = None,
        charge: Charge | None = None,
    ) -> Grant:
        """Take one of ``slots`` at (pod, model) if fewer are held fleet-wide.

        ``overflow`` takes it anyway (the request will queue at the pod and must be
        counted); ``cold`` records a load in progress unless one is (the lease then
        ``loads``).  Seats promised to a reclaim's beneficiary count as held, except for
        that beneficiary.  ``holder`` puts the lease on the board (its member is set
        here); ``charge`` moves its tenant's fair-share counter.  Granted or not, the
        request is taken off the waiting list (a refused bind queues again), and a grant
        uses its promise.  One round trip.
        """
        ...

    async def first_byte(self, lease: Lease) -> float | None:
        """The pod answered: a load this lease started is done; returns its seconds.  The
        board notes that the lease is generating."""
        ...

    async def release(
        self,
        lease: Lease,
        *,
        learned: Learned | None = None,
        affinity: str | None = None,
        quota: QuotaTicket | None = None,
        tokens: int = 0,
        charge: Charge | None = None,
    ) -> None:
        """Give the slot back (response ended, failed, or the client left), in one round
        trip together with what the request taught, its conversation's pod, its quota and
        the correction of its fair-share charge."""
        ...

    # ---- the scheduler's waiting list and reclaims
    async def post_waiter(self, waiter: Waiter) -> None:
        """``waiter`` waits for a slot (fleet-wide: every replica's scheduler sees it)."""
        ...

    async def drop_waiter(self, request_id: str) -> None:
        """It no longer waits (bound, refused or gone); a promise made to it is withdrawn."""
        ...

    async def reclaim(self, reservation: Reservation) -> bool:
        """Take the victim's slot back for the beneficiary: mark the victim, promise its seat,
        and tell the victim's replica (:meth:`on_preempt`).  False if the victim is already
        being taken back, is gone, or the beneficiary holds a promise."""
        ...

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(member)`` when a lease of this replica is to be taken back."""
        ...

    # ---- loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        """Take the fleet-wide cold-load decision lock of ``model`` for ``ttl`` seconds."""
        ...

    async def unlock_load(self, model: str, owner: str) -> None: ...

    async def forget_loaded(self, pod: str, model: str) -> None:
        """The copy a finished load made on ``pod`` is gone (the balancer unloaded it):
        fleet-wide, it is no longer counted as resident before the polls show it."""
        ...

    async def refresh(self) -> None:
        """Bring :meth:`occupancy` up to date now (one round trip)."""
        ...

    # ---- learning and memory
    async def learn(self, model: str, learned: Learned) -> None: ...

    async def penalise(self, pod: str, seconds: float) -> None: ...

    async def clear_penalty(self, pod: str) -> None: ...

    async def remember(self, key: str, pod: str) -> None: ...

    # ---- quotas
    async def admit(self, key: ApiKey, request_id: str) -> QuotaVerdict:
        """Per-key concurrency, requests and tokens per minute, fleet-wide."""
        ...

    async def finish_quota(self, ticket: QuotaTicket, tokens: int = 0) -> None: ...

    # ---- slot-freed signal (late binding)
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]: ...

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None: ...

    # ---- lifecycle
    async def start(self) -> None: ...

    async def close(self) -> None: ...
