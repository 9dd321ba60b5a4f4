"""Faults never fail requests: a redis-server of the test's own, stopped and started again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer
from prometheus_client import CollectorRegistry

from ollama_balancer.core.auth import ApiKey
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.metrics import SharedMetrics
from tests.harness.eventually import eventually
from tests.harness.redis import StateFactory

pytestmark = pytest.mark.timeout(60)

POD, MODEL = "gpu-0", "llama3:latest"
LEASES = f"t:lease:{POD}|{MODEL}"


async def raw_count(server: RedisServer, key: str) -> int:
    client = aioredis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        return int(await client.zcard(key))
    finally:
        await client.aclose()


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def test_store_down_mid_run_then_back(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    registry = CollectorRegistry()
    metrics = SharedMetrics(registry)
    a, b = make_state("a", metrics), make_state("b")
    await a.start()
    await b.start()
    assert a.up and b.up
    assert gauge(registry, "ollama_fleet_shared_state_up") == 1.0
    held = (await a.acquire(POD, MODEL, slots=3, request_id="1")).lease
    gone = (await a.acquire(POD, MODEL, slots=3, request_id="2")).lease
    assert held is not None and gone is not None and held.shared
    await eventually(lambda: b.occupancy().inflight(POD, MODEL) == 2)

    own_redis.stop()
    # Traffic goes on: nothing raises, local state serves at once.
    t0 = time.monotonic()
    during = await a.acquire(POD, MODEL, slots=3, request_id="3")
    assert during.lease is not None and not during.lease.shared
    await a.release(gone)
    await eventually(lambda: not a.up and not b.up, "both replicas to notice", timeout=1.0)
    assert time.monotonic() - t0 < 1.0 + 0.2  # b, idle, noticed through its events/ping
    assert a.status()["mode"] == "fallback"
    assert gauge(registry, "ollama_fleet_shared_state_up") == 0.0
    assert gauge(registry, "ollama_fleet_shared_state_fallbacks_total") == 1.0
    # Local state counts this replica's own requests (the two it holds); b, degraded to
    # "remember", still counts the two of a's the store last showed (until a lease TTL).
    assert a.occupancy().inflight(POD, MODEL) == 2
    assert b.local.occupancy().inflight(POD, MODEL) == 0
    assert b.occupancy().inflight(POD, MODEL) == 2

    own_redis.start()  # same port, empty: as after a restart
    await eventually(lambda: a.up and b.up)
    # Re-registered: the lease held through the outage and the one taken during it.
    assert await raw_count(own_redis, LEASES) == 2
    await eventually(lambda: b.occupancy().inflight(POD, MODEL) == 2)
    assert gauge(registry, "ollama_fleet_shared_state_up") == 1.0
    # And shared again: b sees a's new leases, and the slots hold fleet-wide.
    assert (await b.acquire(POD, MODEL, slots=3, request_id="4")).lease is not None
    assert (await a.acquire(POD, MODEL, slots=3, request_id="5")).lease is None
    await a.release(held)
    assert during.lease is not None
    await a.release(during.lease)
    assert await raw_count(own_redis, LEASES) == 1


async def test_given_back_during_the_outage_is_removed_on_return(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    """The store did not restart (a network partition): leases released meanwhile are
    removed when it answers again, instead of holding their slot until the TTL."""
    a = make_state("a")
    await a.start()
    lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
    assert lease is not None
    port = own_redis.port
    # SIGSTOP would be a partition; a paused server is one too: the pid stays.
    assert own_redis.proc is not None
    own_redis.proc.send_signal(19)  # SIGSTOP
    try:
        await eventually(lambda: not a.up)  # the idle replica's health ping timed out
        await a.release(lease)  # served locally: nothing reaches the store
        assert a.occupancy().inflight(POD, MODEL) == 0
    finally:
        own_redis.proc.send_signal(18)  # SIGCONT
    await eventually(lambda: a.up)
    assert await raw_count(own_redis, LEASES) == 0
    assert own_redis.port == port


async def test_unreachable_at_start_serves_locally_then_connects(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    own_redis.stop()
    registry = CollectorRegistry()
    a = make_state("a", SharedMetrics(registry))
    await a.start()  # does not raise
    assert not a.up and a.status()["mode"] == "fallback"
    assert gauge(registry, "ollama_fleet_shared_state_up") == 0.0
    key = ApiKey("team", "0" * 64, requests_per_minute=1)
    assert (await a.admit(key, "1")).admitted
    assert not (await a.admit(key, "2")).admitted  # the local limiter serves
    lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
    assert lease is not None
    own_redis.start()
    await eventually(lambda: a.up)
    assert gauge(registry, "ollama_fleet_shared_state_up") == 1.0
    assert await raw_count(own_redis, LEASES) == 1  # the lease taken before is shared now
    await a.release(lease)
    assert await raw_count(own_redis, LEASES) == 0


async def test_leases_are_renewed_while_requests_run(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    a, b = make_state("a"), make_state("b")
    await a.start()
    await b.start()
    lease = (await a.acquire(POD, MODEL, slots=1, request_id="1")).lease
    assert lease is not None
    await asyncio.sleep(2.5)  # longer than the 2 s TTL: renewals kept it
    assert (await b.acquire(POD, MODEL, slots=1, request_id="2")).lease is None
    await a.release(lease)
    assert (await b.acquire(POD, MODEL, slots=1, request_id="3")).lease is not None


async def test_clean_close_gives_leases_back(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    a = make_state("a")
    await a.start()
    assert (await a.acquire(POD, MODEL, slots=2, request_id="1")).lease is not None
    assert await raw_count(own_redis, LEASES) == 1
    await a.close()
    assert await raw_count(own_redis, LEASES) == 0


async def test_metrics_of_a_sharing_replica(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    registry = CollectorRegistry()
    holder: list[FallbackState] = []
    metrics = SharedMetrics(registry, held=lambda: holder[0].own_leases())
    a, dead = make_state("a", metrics), make_state("dead")
    holder.append(a)
    await a.start()
    await dead.start()
    leases = [(await a.acquire(POD, MODEL, slots=4, request_id=str(i))).lease for i in range(2)]
    assert (await a.acquire(POD, "other", slots=1, request_id="3")).lease is not None
    labels = {"backend": POD, "model": MODEL}
    assert registry.get_sample_value("ollama_fleet_shared_leases_held", labels) == 2.0
    assert (
        registry.get_sample_value(
            "ollama_fleet_shared_leases_held", {"backend": POD, "model": "other"}
        )
        == 1.0
    )
    granted = {"result": "granted"}
    assert (
        registry.get_sample_value("ollama_fleet_shared_lease_acquire_seconds_count", granted) == 3
    )
    for lease in leases:
        assert lease is not None
        await a.release(lease)
    assert registry.get_sample_value("ollama_fleet_shared_leases_held", labels) is None
    # A replica that dies holding a lease: once its TTL (2 s) passes, a refresh on the
    # living replica reclaims it and counts it.
    assert (await dead.acquire(POD, MODEL, slots=4, request_id="d")).lease is not None
    for task in dead.link._tasks:  # stop renewing, like kill -9 (no clean close)
        task.cancel()
    await eventually(
        lambda: registry.get_sample_value("ollama_fleet_shared_leases_reclaimed_total") == 1.0,
        timeout=5,
    )
    assert a.occupancy().inflight(POD, MODEL) == 0


async def test_an_unload_forgets_a_finished_load_on_every_replica(
    own_redis: RedisServer, make_state: StateFactory
) -> None:
    """A copy a load made is counted as resident before the polls show it; once the
    balancer unloaded it, no replica may count it any more (#24 item 5)."""
    a, b = make_state("a"), make_state("b")
    await a.start()
    await b.start()
    lease = (await a.acquire(POD, MODEL, slots=2, request_id="1", cold=True)).lease
    assert lease is not None
    await a.first_byte(lease)
    await a.release(lease)
    await eventually(lambda: b.occupancy().loaded_at(POD, MODEL) is not None)
    await a.forget_loaded(POD, MODEL)
    assert a.occupancy().loaded_at(POD, MODEL) is None
    assert a.local.occupancy().loaded_at(POD, MODEL) is None
    await eventually(lambda: b.occupancy().loaded_at(POD, MODEL) is None, "the forget event")
    client = aioredis.Redis(host="127.0.0.1", port=own_redis.port, decode_responses=True)
    try:
        assert await client.hlen("t:loaded") == 0
    finally:
        await client.aclose()
    await b.refresh()  # a refresh does not bring it back
    assert b.occupancy().loaded_at(POD, MODEL) is None
