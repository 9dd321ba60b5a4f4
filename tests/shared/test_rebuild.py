"""A store outage without strangers, and an empty store rebuilt at once (issue #24), on a
real redis-server of the test's own.

* degraded to ``remember``, a replica keeps counting what the store last showed of the
  others (their requests, the load one of them started), and ``alone`` does not;
* ``hold``: a cold-load decision during an outage waits for the store, and takes the
  store's lock when it is back in time;
* a store restarted empty gets back, before anything new is granted, the leases, the loads
  in progress (the owner's, and the one a follower waits for), the finished loads and the
  learned times; every replica says so (log, metric, status); a flush mid-run, without a
  dropped connection, is noticed by the epoch and rebuilt the same way, the scheduler's
  board with it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer
from prometheus_client import CollectorRegistry

from ollama_balancer.core.priority import Priority
from ollama_balancer.core.shared.board import Charge, SlotHolder, Waiter
from ollama_balancer.core.shared.degrade import Degrade
from ollama_balancer.core.shared.model import Learned
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.metrics import STORE_REBUILDS, SharedMetrics
from tests.harness.eventually import eventually
from tests.harness.redis import StateFactory

pytestmark = pytest.mark.timeout(60)

POD, OTHER_POD, MODEL = "gpu-0", "gpu-1", "llama3:latest"


async def _client(server: RedisServer) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)


def _whole(state: FallbackState) -> Callable[[], bool]:
    """The replica's view shows the load in progress and both requests (a renewal publishes
    nothing: the next refresh, within a second, brings the other replica's lease)."""

    def probe() -> bool:
        occ = state.occupancy()
        return occ.loading(POD, MODEL) is not None and occ.inflight(POD, MODEL) == 2

    return probe


async def _both_up(a: FallbackState, b: FallbackState) -> None:
    await a.start()
    await b.start()
    assert a.up and b.up


@pytest.mark.parametrize("degrade", [Degrade.ALONE, Degrade.REMEMBER])
async def test_an_outage_keeps_the_fleet_as_last_seen(
    own_redis: RedisServer, make_state: StateFactory, degrade: Degrade
) -> None:
    a, b = make_state("a"), make_state("b", degrade=degrade)
    await _both_up(a, b)
    loading = (await a.acquire(POD, MODEL, slots=4, request_id="1", cold=True)).lease
    busy = (await a.acquire(OTHER_POD, MODEL, slots=4, request_id="2")).lease
    assert loading is not None and loading.loads and busy is not None
    await eventually(lambda: b.occupancy().loading(POD, MODEL) is not None)

    own_redis.stop()
    await eventually(lambda: not b.up, "b to notice the outage")
    seen = b.occupancy()
    if degrade is Degrade.ALONE:
        # Alone: a's load and requests vanish; b would start a second load of the model.
        assert seen.loading(POD, MODEL) is None and seen.total_inflight() == 0
    else:
        assert seen.loading(POD, MODEL) is not None
        assert seen.loading(POD, MODEL).request_id == loading.member  # type: ignore[union-attr]
        assert (seen.inflight(POD, MODEL), seen.inflight(OTHER_POD, MODEL)) == (1, 1)
        # Its own requests count on top, and the others' are forgotten after a lease TTL.
        mine = (await b.acquire(OTHER_POD, MODEL, slots=4, request_id="3")).lease
        assert mine is not None and b.occupancy().inflight(OTHER_POD, MODEL) == 2
        await eventually(lambda: b.occupancy().inflight(OTHER_POD, MODEL) == 1, timeout=5)
        assert b.status()["degrade"] == "remember"


async def test_hold_lets_the_store_decide_a_cold_load(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    b = make_state("b", degrade=Degrade.HOLD, degraded_hold=3.0)
    await b.start()
    own_redis.stop()
    await eventually(lambda: not b.up)
    # Outage too long: the decision goes on alone after the hold.
    t0 = time.monotonic()
    assert await b.lock_load(MODEL, "req-1", 2.0)
    assert 3.0 <= time.monotonic() - t0 < 4.5
    await b.unlock_load(MODEL, "req-1")
    # Back within the hold: the store's lock decides (another replica would see it).
    t0 = time.monotonic()
    pending = b.lock_load(MODEL, "req-2", 2.0)
    own_redis.start()
    assert await pending
    assert time.monotonic() - t0 < 3.0 and b.up
    client = await _client(own_redis)
    try:
        assert await client.get("t:loadlock:" + MODEL) == "req-2"
    finally:
        await client.aclose()


async def test_an_empty_store_is_rebuilt_before_anything_new(
    own_redis: RedisServer, make_state: StateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    a, b = make_state("a", SharedMetrics(registry)), make_state("b")
    await _both_up(a, b)
    # a starts a load of MODEL on POD; b's request follows it; a learned the model's times
    # and finished a load on OTHER_POD.
    owner = (await a.acquire(POD, MODEL, slots=4, request_id="1", cold=True)).lease
    await b.refresh()
    follower = (await b.acquire(POD, MODEL, slots=4, request_id="2")).lease
    assert owner is not None and owner.loads and follower is not None and not follower.loads
    done = (await a.acquire(OTHER_POD, "qwen:7b", slots=4, request_id="3", cold=True)).lease
    assert done is not None
    await a.first_byte(done)
    await a.release(done, learned=Learned(load_seconds=7.5, service_seconds=1.5))

    caplog.set_level(logging.WARNING, "ollama_fleet.shared")
    own_redis.stop()
    await eventually(lambda: not a.up and not b.up)
    own_redis.start()  # same port, empty
    await eventually(lambda: a.up and b.up, "both replicas back")

    client = await _client(own_redis)
    try:
        assert await client.zcard(f"t:lease:{POD}|{MODEL}") == 2  # both leases
        loads = await client.hgetall("t:loads")
        assert list(loads) == [f"{POD}|{MODEL}"]  # the load in progress, once
        assert await client.hexists("t:loaded", f"{OTHER_POD}|qwen:7b")
        assert float(await client.hget("t:learn:load", "qwen:7b") or 0) == 7.5
        assert float(await client.hget("t:learn:service", "qwen:7b") or 0) == 1.5
        # Both replicas see the whole fleet again, and know the store was lost.
        for state in (a, b):
            await eventually(_whole(state), timeout=2.0)
            assert state.status()["rebuilds"] == 1
        assert registry.get_sample_value(STORE_REBUILDS) == 1.0
        assert sum("shared_state_rebuilt" in r.getMessage() for r in caplog.records) == 2
        # The load's first byte ends it, as before the restart.
        await a.first_byte(owner)
        await eventually(lambda: b.occupancy().loading(POD, MODEL) is None)
        assert await client.hlen("t:loads") == 0
    finally:
        await client.aclose()
    await a.release(owner)
    await b.release(follower)


async def test_a_follower_vouches_for_a_load_whose_owner_died(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    a, b = make_state("a"), make_state("b")
    await _both_up(a, b)
    owner = (await a.acquire(POD, MODEL, slots=4, request_id="1", cold=True)).lease
    await b.refresh()
    follower = (await b.acquire(POD, MODEL, slots=4, request_id="2")).lease
    assert owner is not None and follower is not None
    for task in a.link._tasks:  # a dies (no clean close): nothing of it comes back
        task.cancel()
    a.link.up = False
    own_redis.stop()
    await eventually(lambda: not b.up)
    own_redis.start()
    await eventually(lambda: b.up)
    client = await _client(own_redis)
    try:
        record = await client.hget("t:loads", f"{POD}|{MODEL}")
        assert record is not None and json.loads(record)["r"] == follower.member
        # The follower's first byte now ends the load it vouched for.
        await b.first_byte(follower)
        assert await client.hlen("t:loads") == 0
    finally:
        await client.aclose()
    await b.release(follower)


async def test_a_flush_mid_run_is_noticed_and_rebuilt(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    a = make_state("a")
    await a.start()
    lease = (await a.acquire(POD, MODEL, slots=4, request_id="1", cold=True)).lease
    assert lease is not None
    client = await _client(own_redis)
    try:
        await client.flushall()  # no connection dropped: only the epoch can tell
        await eventually(lambda: a.status()["rebuilds"] == 1, "the flush to be noticed")
        assert a.up and a.link.fallbacks == 0
        assert await client.zcard(f"t:lease:{POD}|{MODEL}") == 1
        assert await client.hlen("t:loads") == 1
        await eventually(lambda: a.occupancy().loading(POD, MODEL) is not None)
    finally:
        await client.aclose()
    await a.release(lease)


async def test_a_flush_mid_run_gives_the_board_back_before_the_next_renewal(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    """The scheduler's board is re-asserted by the same write-back: a lease's holder document
    and a waiting request come back at once, not at a renewal (none comes in this test)."""
    a = make_state("a", lease_ttl=60.0, renew_interval=60.0)
    await a.start()
    heavy = (MODEL, Priority.BATCH, "heavy")
    holder = SlotHolder("", "", "", "", "", cls=Priority.BATCH, tenant="heavy")
    grant = await a.acquire(
        POD, MODEL, slots=2, request_id="h", holder=holder, charge=Charge(heavy, 8)
    )
    lease = grant.lease
    assert lease is not None
    await a.post_waiter(
        Waiter("w", MODEL, "a", arrival=a.local.clock(), cls=Priority.STANDARD, tenant="light")
    )
    client = await _client(own_redis)
    try:
        await eventually(lambda: "w" in a.board().waiters and lease.member in a.board().holders)
        await client.flushall()

        async def board_back() -> bool:
            return bool(
                await client.hexists(f"t:holder:{POD}|{MODEL}", lease.member)
                and await client.hexists("t:waiter", "w")
                and await client.hget("t:fair", f"{MODEL}|batch|heavy") == "8"
            )

        await eventually(board_back, "the board written back", interval=0.05, timeout=5)
        assert a.status()["rebuilds"] == 1 and a.link.fallbacks == 0
        assert await client.zcard(f"t:lease:{POD}|{MODEL}") == 1
        await eventually(lambda: "w" in a.board().waiters and lease.member in a.board().holders)
    finally:
        await client.aclose()
    await a.drop_waiter("w")
    await a.release(lease)


async def test_loads_that_ended_during_a_partition_end_in_the_store(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    """The store kept its contents (a partition, a failover to an up-to-date replica): the
    loads a replica saw finish, or gave up, while it could not reach it must not stay listed
    as under way until their TTL."""
    a = make_state("a")
    await a.start()
    done = (await a.acquire(POD, MODEL, slots=4, request_id="1", cold=True)).lease
    left = (await a.acquire(OTHER_POD, MODEL, slots=4, request_id="2", cold=True)).lease
    assert done is not None and done.loads and left is not None and left.loads
    assert own_redis.proc is not None
    own_redis.proc.send_signal(19)  # SIGSTOP: the store is there, unreachable
    try:
        await eventually(lambda: not a.up, "the partition to be noticed")
        await a.first_byte(done)  # finished meanwhile
        await a.release(left)  # its client left before the first byte: abandoned
    finally:
        own_redis.proc.send_signal(18)  # SIGCONT
    await eventually(lambda: a.up)
    client = await _client(own_redis)
    try:
        assert await client.hlen("t:loads") == 0
        assert await client.hexists("t:loaded", f"{POD}|{MODEL}")
        assert not await client.hexists("t:loaded", f"{OTHER_POD}|{MODEL}")
    finally:
        await client.aclose()
    await eventually(lambda: a.occupancy().loading(POD, MODEL) is None)
    assert a.occupancy().loading(OTHER_POD, MODEL) is None
    await a.release(done)
