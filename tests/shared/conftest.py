"""Shared-state fixtures: one real redis-server per session (flushed per test), and
stores built on it with short TTLs so expiry tests take a fraction of a second; a
redis-server of the test's own (to stop and start) and replicas' shared states on it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer

from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.metrics import SharedMetrics
from ollama_balancer.shared.store import RedisState
from tests.harness.redis import StateFactory, StoreFactory, running_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at what the scripts left in the store."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


_replicas = itertools.count(1)


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreFactory]:
    """Connected RedisState instances ("replicas") on the session's redis-server."""
    made: list[RedisState] = []

    async def connect(store: RedisState) -> RedisState:
        await store.connect()
        return store

    def make(url: str | None = None, **kw: object) -> RedisState:
        kw.setdefault("replica", f"replica-{next(_replicas)}")
        kw.setdefault("keys", Keys("test"))
        kw.setdefault("op_timeout", 1.0)
        store = RedisState(parse_store_url(url or redis_url), **kw)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: stopping it is an outage, starting it again an
    empty store on the same port."""
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def make_state(own_redis: RedisServer) -> AsyncIterator[StateFactory]:
    made: list[FallbackState] = []

    def make(
        replica: str = "r1",
        metrics: SharedMetrics | None = None,
        lease_ttl: float = 2.0,
        **kw: object,
    ) -> FallbackState:
        store = RedisState(
            parse_store_url(own_redis.url),
            replica=replica,
            keys=Keys("t"),
            op_timeout=0.2,
            lease_ttl=lease_ttl,
        )
        kw.setdefault("renew_interval", 0.5)
        kw.setdefault("refresh_interval", 0.2)
        kw.setdefault("health_interval", 0.2)
        kw.setdefault("reconnect_interval", 0.2)
        state = FallbackState(
            store,
            LocalState(Ledger(), replica=replica),
            observer=metrics,
            **kw,  # type: ignore[arg-type]
        )
        made.append(state)
        return state

    yield make
    for state in made:
        await state.close()
