"""RedisState against a real redis-server: several store instances stand for replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from ollama_balancer.core.auth import ApiKey, KeyState
from ollama_balancer.core.shared.model import Learned, SlotFreed
from ollama_balancer.core.shared.resync import entries_of
from ollama_balancer.shared.store import RedisState
from tests.harness.eventually import eventually
from tests.harness.redis import StoreFactory

pytestmark = pytest.mark.timeout(60)

POD, MODEL = "gpu-0", "registry.ollama.ai/library/llama3:latest"


async def reply(aw: object) -> Any:
    """A raw client's reply, typed the same with every redis-py release (before 8 the
    stubs said "awaitable or value" for the asyncio client)."""
    return await cast(Awaitable[Any], aw)


async def replicas(make_store: StoreFactory, n: int, **kw: object) -> list[RedisState]:
    stores = [make_store(**kw) for _ in range(n)]
    await asyncio.gather(*(s.connect() for s in stores))
    return stores


async def test_acquire_is_atomic_across_replicas(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    """60 acquires from three replicas at once for 4 slots: exactly 4 granted, never more held."""
    stores = await replicas(make_store, 3)
    grants = await asyncio.gather(
        *(stores[i % 3].acquire(POD, MODEL, slots=4, request_id=f"r{i}") for i in range(60))
    )
    granted = [g.lease for g in grants if g.lease is not None]
    assert len(granted) == 4
    assert max(g.held for g in grants) == 4
    assert await raw.zcard("test:lease:" + f"{POD}|{MODEL}") == 4
    # Released one by one, each slot is taken again by exactly one of the waiting requests.
    for n, lease in enumerate(granted):
        await stores[n % 3].release(lease)
        again = await asyncio.gather(
            *(stores[i % 3].acquire(POD, MODEL, slots=4, request_id=f"x{n}-{i}") for i in range(6))
        )
        assert sum(g.lease is not None for g in again) == 1
        assert max(g.held for g in again) == 4


async def test_overflow_is_counted_beyond_the_slots(make_store: StoreFactory) -> None:
    (a,) = await replicas(make_store, 1)
    assert (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease is not None
    assert (await a.acquire(POD, MODEL, slots=1, request_id="2")).lease is None
    queued = await a.acquire(POD, MODEL, slots=1, request_id="3", overflow=True)
    assert queued.lease is not None and queued.held == 2
    assert a.occupancy().inflight(POD, MODEL) == 2


async def test_release_frees_the_slot_and_the_index(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    a, b = await replicas(make_store, 2)
    grant = await a.acquire(POD, MODEL, slots=1, request_id="1")
    assert grant.lease is not None
    assert (await b.acquire(POD, MODEL, slots=1, request_id="2")).lease is None
    await a.release(grant.lease)
    assert await reply(raw.smembers("test:leases")) == set()
    assert (await b.acquire(POD, MODEL, slots=1, request_id="3")).lease is not None


async def test_dead_replica_leases_expire_within_the_ttl(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    """A replica that stops renewing (killed) loses its leases after the TTL; the replica
    that finds them expired counts them as reclaimed."""
    dead = make_store(lease_ttl=0.4)
    alive = make_store(lease_ttl=0.4)
    await dead.connect()
    await alive.connect()
    for i in range(2):
        assert (await dead.acquire(POD, MODEL, slots=2, request_id=f"d{i}")).lease is not None
    assert (await alive.acquire(POD, MODEL, slots=2, request_id="a0")).lease is None
    await dead.close()  # no renewals from now on
    await asyncio.sleep(0.5)
    await alive.refresh()
    assert alive.occupancy().inflight(POD, MODEL) == 0
    assert alive.reclaimed == 2
    assert (await alive.acquire(POD, MODEL, slots=2, request_id="a1")).lease is not None


async def test_renew_keeps_leases_alive_and_re_adds_lost_ones(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    (a,) = await replicas(make_store, 1, lease_ttl=0.4)
    lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
    assert lease is not None
    entries = entries_of(a.keys, [lease], [])
    for _ in range(4):  # 0.8 s in all: twice the TTL
        await asyncio.sleep(0.2)
        assert await a.renew(entries) == 0
    await a.refresh()
    assert a.occupancy().inflight(POD, MODEL) == 1
    await raw.flushall()  # the store restarted empty
    assert await a.renew(entries) == 1
    assert await raw.zcard(f"test:lease:{POD}|{MODEL}") == 1
    assert await reply(raw.sismember("test:leases", f"{POD}|{MODEL}"))


async def test_events_keep_other_replicas_mirrors_current(make_store: StoreFactory) -> None:
    a, b = await replicas(make_store, 2)
    subscribed = asyncio.Event()
    listener = asyncio.create_task(b.listen(subscribed))
    try:
        await subscribed.wait()
        await b.refresh()
        lease = (await a.acquire(POD, MODEL, slots=2, request_id="1", cold=True)).lease
        assert lease is not None and lease.loads
        await eventually(lambda: b.occupancy().inflight(POD, MODEL) == 1)
        record = b.occupancy().loading(POD, MODEL)
        assert record is not None and record.request_id == lease.member
        # A follower on another replica joins the load: it does not start a second one.
        follower = (await b.acquire(POD, MODEL, slots=2, request_id="2", cold=True)).lease
        assert follower is not None and not follower.loads
        assert await a.first_byte(lease) is not None
        await eventually(lambda: b.occupancy().loading(POD, MODEL) is None)
        assert b.occupancy().loaded_at(POD, MODEL) is not None
        assert b.occupancy().backend_inflight(POD) == 2
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_a_load_whose_starter_leaves_is_aborted_for_everyone(
    make_store: StoreFactory,
) -> None:
    a, b = await replicas(make_store, 2)
    lease = (await a.acquire(POD, MODEL, slots=2, request_id="1", cold=True)).lease
    assert lease is not None and lease.loads
    await a.release(lease)  # the client left before the first byte: Ollama aborts the load
    await b.refresh()
    assert b.occupancy().loading(POD, MODEL) is None
    again = (await b.acquire(POD, MODEL, slots=2, request_id="2", cold=True)).lease
    assert again is not None and again.loads


async def test_slot_freed_signal_reaches_other_replicas(make_store: StoreFactory) -> None:
    a, b = await replicas(make_store, 2)
    subscribed = asyncio.Event()
    listener = asyncio.create_task(b.listen(subscribed))
    seen: list[SlotFreed] = []
    b.on_slot_freed(seen.append)
    try:
        await subscribed.wait()
        lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
        assert lease is not None
        waiting = asyncio.create_task(b.wait_slot_freed(MODEL, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await a.release(lease)
        freed = await waiting
        assert freed == SlotFreed(POD, MODEL, held=0, slots=1)
        assert seen == [freed]
        assert await b.wait_slot_freed("other-model", timeout=0.05) is None
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_load_lock_admits_one_replica_at_a_time(make_store: StoreFactory) -> None:
    stores = await replicas(make_store, 3)
    got = await asyncio.gather(*(s.lock_load(MODEL, s.replica, 5.0) for s in stores))
    assert sorted(got) == [False, False, True]
    winner = stores[got.index(True)]
    loser = stores[got.index(False)]
    await loser.unlock_load(MODEL, loser.replica)  # not its lock: nothing happens
    assert not await loser.lock_load(MODEL, loser.replica, 5.0)
    await winner.unlock_load(MODEL, winner.replica)
    assert await loser.lock_load(MODEL, loser.replica, 5.0)


async def test_load_lock_expires(make_store: StoreFactory) -> None:
    a, b = await replicas(make_store, 2)
    assert await a.lock_load(MODEL, "a", 0.1)
    assert not await b.lock_load(MODEL, "b", 0.1)
    await asyncio.sleep(0.15)
    assert await b.lock_load(MODEL, "b", 0.1)


async def test_learning_penalties_and_affinity_are_shared(make_store: StoreFactory) -> None:
    a, b = await replicas(make_store, 2)
    subscribed = asyncio.Event()
    listener = asyncio.create_task(b.listen(subscribed))
    try:
        await subscribed.wait()
        await a.learn(MODEL, Learned(load_seconds=10.0, service_seconds=2.0))
        await a.learn(MODEL, Learned(load_seconds=20.0))
        await a.penalise(POD, 30)
        await a.remember("conv-1", POD)
        await b.refresh()
        occ = b.occupancy()
        assert occ.load_seconds(MODEL) == pytest.approx(13.0)  # 10 + 0.3 × (20 - 10)
        assert occ.service_seconds(MODEL) == pytest.approx(2.0)
        assert occ.penalised(POD, b.clock())
        assert not occ.penalised(POD, b.clock() + 31)
        await eventually(lambda: b.affinity("conv-1") == POD)
        fresh = make_store()
        await fresh.connect()
        assert await fresh.recall("conv-1") == POD  # started later: one GET
        await a.refresh()
        await a.clear_penalty(POD)
        await eventually(lambda: not b.occupancy().penalised(POD, b.clock()))
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_release_carries_learning_affinity_and_quota_in_one_round_trip(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    (a,) = await replicas(make_store, 1)
    key = ApiKey("team", "0" * 64, max_concurrent=1, tokens_per_minute=600)
    verdict = await a.admit(key, "1")
    assert verdict.ticket is not None
    lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
    assert lease is not None
    calls = 0
    real_execute = a.connection.client().pipeline(transaction=False).__class__.execute

    async def counting(self: object, *args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return await real_execute(self, *args, **kw)  # type: ignore[arg-type]

    pipeline_class = a.connection.client().pipeline(transaction=False).__class__
    pipeline_class.execute = counting  # type: ignore[method-assign,assignment]
    try:
        await a.release(
            lease,
            learned=Learned(service_seconds=3.0),
            affinity="conv",
            quota=verdict.ticket,
            tokens=500,
        )
    finally:
        pipeline_class.execute = real_execute  # type: ignore[method-assign]
    assert calls == 1
    assert await raw.zcard(f"test:lease:{POD}|{MODEL}") == 0
    assert await raw.zcard("test:quota:team:inflight") == 0
    assert await reply(raw.get("test:affinity:conv")) == POD
    assert float(str(await reply(raw.hget("test:learn:service", MODEL)))) == 3.0
    level = await reply(raw.hget("test:quota:team:tokens", "level"))
    assert float(str(level)) == pytest.approx(100, abs=1)


# ---------------------------------------------------------------------------- quotas


async def test_requests_per_minute_hold_across_three_replicas(make_store: StoreFactory) -> None:
    """60 requests round-robin over three replicas, 30/min allowed: 30 admitted (±1)."""
    stores = await replicas(make_store, 3)
    key = ApiKey("team", "0" * 64, requests_per_minute=30)
    verdicts = [await stores[i % 3].admit(key, f"r{i}") for i in range(60)]
    admitted = [v for v in verdicts if v.admitted]
    assert abs(len(admitted) - 30) <= 1
    refused = [v for v in verdicts if not v.admitted]
    assert all(v.reason == "request rate limit exceeded (30/min)" for v in refused)
    assert all(1 <= v.retry_after <= 2 for v in refused)  # one request refills in 2 s


async def test_concurrency_holds_across_replicas(make_store: StoreFactory) -> None:
    a, b = await replicas(make_store, 2)
    key = ApiKey("team", "0" * 64, max_concurrent=2)
    first = [await s.admit(key, f"r{i}") for i, s in enumerate((a, b))]
    assert all(v.admitted for v in first)
    third = await a.admit(key, "r3")
    assert not third.admitted and third.retry_after == 1
    assert third.reason == "too many concurrent requests (limit 2)"
    ticket = first[0].ticket
    assert ticket is not None
    await a.finish_quota(ticket)
    assert (await b.admit(key, "r4")).admitted


async def test_a_dead_replica_quota_tickets_expire(make_store: StoreFactory) -> None:
    dead = make_store(lease_ttl=0.3)
    alive = make_store(lease_ttl=0.3)
    await dead.connect()
    await alive.connect()
    key = ApiKey("team", "0" * 64, max_concurrent=1)
    assert (await dead.admit(key, "1")).admitted
    assert not (await alive.admit(key, "2")).admitted
    await dead.close()
    await asyncio.sleep(0.35)
    assert (await alive.admit(key, "3")).admitted


# The server-side buckets give the verdicts of the local limiter (auth.KeyState) for
# the same sequence of events at the same instants.
QUOTA_SEQUENCES = [
    pytest.param(
        ApiKey("k", "0" * 64, requests_per_minute=3),
        [(0.0, "admit"), (0.1, "admit"), (0.2, "admit"), (0.3, "admit"), (20.5, "admit")],
        id="requests: burst of a minute, then one every 20 s",
    ),
    pytest.param(
        ApiKey("k", "0" * 64, tokens_per_minute=100),
        [(0.0, "admit"), (1.0, "finish 250"), (1.5, "admit"), (50.0, "admit"), (91.0, "admit")],
        id="tokens: charged after the fact, floored at a minute of debt",
    ),
    pytest.param(
        ApiKey("k", "0" * 64, requests_per_minute=2, tokens_per_minute=60),
        [(0, "admit"), (0, "finish 59"), (0.5, "admit"), (2.0, "admit"), (31, "admit")],
        id="both: tokens checked before requests",
    ),
    pytest.param(
        ApiKey("k", "0" * 64, max_concurrent=1, requests_per_minute=60),
        [(0, "admit"), (0.5, "admit"), (1, "finish 0"), (1, "admit")],
        id="concurrency refuses first and takes no request token",
    ),
]


@pytest.mark.parametrize(("key", "steps"), QUOTA_SEQUENCES)
async def test_server_buckets_match_the_local_limiter(
    make_store: StoreFactory, key: ApiKey, steps: list[tuple[float, str]]
) -> None:
    (store,) = await replicas(make_store, 1)
    local = KeyState.for_key(key)
    base_ms = 1_700_000_000_000
    tickets = []
    for i, (t, action) in enumerate(steps):
        now_ms = base_ms + int(t * 1000)
        if action == "admit":
            expected = local.admit(key, t)
            got = await store.admit(key, f"r{i}", now_ms=now_ms)
            assert (got.reason, got.retry_after) == (expected or ("", 0)), (t, action)
            if got.ticket is not None:
                tickets.append(got.ticket)
        else:
            used = int(action.split()[1])
            local.inflight -= 1
            local.tokens.charge(t, used)
            await store.finish_quota(tickets.pop(0), used, now_ms=now_ms)
