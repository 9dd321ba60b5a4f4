"""Names of every Redis key and channel the balancer uses (pure).

All start with the ``shared_state_prefix`` (default ``ollama-fleet``), so several
fleets can share one Redis; ``redis-cli --scan --pattern 'ollama-fleet:*'`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import field_of

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "ollama-fleet"

    # ---- slot leases: one sorted set per (pod, model), members scored by expiry (ms)
    @property
    def lease_prefix(self) -> str:
        return f"{self.prefix}:lease:"

    def lease(self, pod: str, model: str) -> str:
        return self.lease_prefix + field_of(pod, model)

    @property
    def index(self) -> str:
        """Set of ``pod|model`` fields that may hold leases (what a refresh walks)."""
        return f"{self.prefix}:leases"

    # ---- loads and memory
    @property
    def loads(self) -> str:
        return f"{self.prefix}:loads"

    @property
    def loaded(self) -> str:
        return f"{self.prefix}:loaded"

    @property
    def penalties(self) -> str:
        return f"{self.prefix}:penalties"

    @property
    def learn_load(self) -> str:
        return f"{self.prefix}:learn:load"

    @property
    def learn_service(self) -> str:
        return f"{self.prefix}:learn:service"

    def load_lock(self, model: str) -> str:
        return f"{self.prefix}:loadlock:{model}"

    def affinity(self, key: str) -> str:
        return f"{self.prefix}:affinity:{key}"

    # ---- the scheduler's board (see scripts.py for what each holds)
    def holders(self, pod: str, model: str) -> str:
        """Hash: member → holder document, for the leases of (pod, model)."""
        return self.holder_prefix + field_of(pod, model)

    @property
    def holder_prefix(self) -> str:
        return f"{self.prefix}:holder:"

    @property
    def holder_index(self) -> str:
        """Set of ``pod|model`` fields that may have holder documents."""
        return f"{self.prefix}:holders"

    @property
    def waiting(self) -> str:
        """Sorted set: waiting request id, scored by the expiry of its entry (ms)."""
        return f"{self.prefix}:waiting"

    @property
    def waiters(self) -> str:
        """Hash: waiting request id → its document."""
        return f"{self.prefix}:waiter"

    @property
    def promises(self) -> str:
        """Hash: beneficiary's request id → the seat promised to it."""
        return f"{self.prefix}:promises"

    @property
    def reclaiming(self) -> str:
        """Hash: member of a lease being taken back → its ``pod|model`` field."""
        return f"{self.prefix}:reclaiming"

    @property
    def fair(self) -> str:
        """Hash: ``model|class|tenant`` → fair-share counter (slot-seconds per weight)."""
        return f"{self.prefix}:fair"

    @property
    def epoch(self) -> str:
        """An id set when missing (by a refresh, or a replica's write-back): another id
        than the one a replica last read means the store lost its contents
        (``resync.store_lost``, the board's ``apply_refresh``)."""
        return f"{self.prefix}:epoch"

    # ---- ordering and events
    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:events"

    # ---- quotas (by the API key's name, never the key)
    def quota_inflight(self, name: str) -> str:
        return f"{self.prefix}:quota:{name}:inflight"

    def quota_requests(self, name: str) -> str:
        return f"{self.prefix}:quota:{name}:requests"

    def quota_tokens(self, name: str) -> str:
        return f"{self.prefix}:quota:{name}:tokens"
