"""Shared-state fixtures: one real redis-server per session (flushed per test), and
stores built on it with short TTLs so expiry tests take a fraction of a second."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer

from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.store import RedisState


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


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

StoreFactory = Callable[..., RedisState]


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


def fallback_on(store: RedisState, **kw: object) -> FallbackState:
    local = LocalState(Ledger(), replica=store.replica, clock=time.monotonic)
    kw.setdefault("refresh_interval", 0.2)
    kw.setdefault("health_interval", 0.2)
    kw.setdefault("reconnect_interval", 0.2)
    kw.setdefault("renew_interval", 0.5)
    return FallbackState(store, local, **kw)  # type: ignore[arg-type]


__all__ = ["Path", "fallback_on"]
