"""What a replica keeps of the store across an outage, and what it writes back (thin I/O).

When the store is lost, :meth:`Memory.forget_store` keeps the fleet as the mirror last
showed it (:class:`~ollama_balancer.core.shared.degrade.LastSeen`): the degraded view reads
it while the store is away, and the write-back uses it when the store returns.  When the
link comes back — and with each refresh, for a store emptied under a live connection —
:meth:`Memory.write_back` sends what the store lacks (``resync.plan_reassert``) in one
script and tells whether the store had lost its contents (its epoch).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.shared import scripts as S
from ..core.shared.degrade import LastSeen
from ..core.shared.local import LocalState
from ..core.shared.mirror import LOADED_MEMORY
from ..core.shared.model import Lease
from ..core.shared.resync import ReassertPlan, plan_reassert, store_lost
from .store import LEARN_TTL_MS, RedisState, loaded_call, release_call, seconds_arg

__all__ = ["Memory", "Reasserted", "reassert", "settle"]


@dataclass(frozen=True, slots=True)
class Reasserted:
    """What one write-back found and wrote."""

    lost: bool
    """The store had lost its contents since this replica last saw it."""
    epoch: str
    loads: int
    loaded: int
    learned: int


async def reassert(
    store: RedisState, plan: ReassertPlan, candidate: str
) -> tuple[bool, str, tuple[int, int, int]]:
    """Write back what the store lacks of ``plan`` (one script); set the epoch to
    ``candidate`` if the store has none.  Returns (epoch created, epoch, (loads, finished
    loads, learned times) written)."""
    k = store.keys
    args: list[object] = [candidate, LEARN_TTL_MS, int(store.load_ttl * 1000)]
    args += [len(plan.loads), len(plan.loaded)]
    for load in plan.loads:
        args += [load.field, load.member, load.age_ms]
    for done in plan.loaded:
        args += [done.field, done.age_ms]
    for x in plan.learned:
        args += [x.model, seconds_arg(x.load_seconds), seconds_arg(x.service_seconds)]
    created, epoch, loads, loaded, learned = await store.connection.eval(
        S.REBUILD, [k.loads, k.loaded, k.learn_load, k.learn_service, k.epoch], args
    )
    text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    store.epoch = text
    return bool(int(created)), text, (int(loads), int(loaded), int(learned))


async def settle(store: RedisState, loads: Iterable[tuple[Lease, bool]]) -> None:
    """End in the store the loads this replica started that finished (their first byte
    came) or were abandoned (their request left first) while the store could not hear it:
    a store that kept its contents (a partition, a failover to an up-to-date replica) would
    list them as under way until their TTL, and routing would wait on loads long done."""
    calls = [loaded_call(store.keys, lease) if done else release_call(store.keys, lease)
             for lease, done in loads]  # fmt: skip
    if calls:
        await store.connection.batch(calls)


class Memory:
    """The fleet as last seen, the store's epoch, and how often the store came back empty."""

    def __init__(self) -> None:
        self.last: LastSeen | None = None
        self.epoch: str | None = None
        self.rebuilds = 0

    def forget_store(self, store: RedisState, local: LocalState, at: float) -> None:
        """The store is lost: keep what its mirror showed (if it showed anything yet)."""
        if store.mirror.synced:
            self.last = LastSeen(
                fleet=store.mirror.occupancy(),
                own=local.occupancy(),
                at=at,
                replica=store.replica,
            )

    def lost(self, store: RedisState) -> bool:
        """Whether the epoch the last refresh read says the store lost its contents."""
        return store_lost(self.epoch, store.epoch)

    async def write_back(
        self,
        store: RedisState,
        local: LocalState,
        leases: dict[str, Lease],
        answered: Iterable[str],
    ) -> Reasserted:
        """Send what the store lacks; the leases that now vouch for a load are marked as
        owning it in ``leases`` (their first byte ends it, their early release aborts it)."""
        plan = plan_reassert(
            leases, answered, local.occupancy(), self.last, local.clock(),
            loaded_memory=LOADED_MEMORY,
        )  # fmt: skip
        created, epoch, (loads, loaded, learned) = await reassert(
            store, plan, candidate=secrets.token_hex(8)
        )
        for member in plan.owners:
            lease = leases.get(member)
            if lease is not None:
                leases[member] = dataclasses.replace(lease, loads=True)
        lost = store_lost(self.epoch, None if created else epoch)
        self.epoch = epoch
        if lost:
            self.rebuilds += 1
        return Reasserted(lost, epoch, loads, loaded, learned)
