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

    @property
    def epoch(self) -> str:
        """A random id set by the first replica to find the store empty: another id, or
        none, means the store lost its contents (``resync.store_lost``)."""
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
