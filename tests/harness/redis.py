"""A real redis-server for the shared-state tests, and the type of their store factory.

The server itself is :class:`bench.redis_server.RedisServer` (the benchmarks start it too):
a child process on loopback with no persistence, stopped by its PID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.redis_server import RedisServer

from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.store import RedisState

__all__ = ["StateFactory", "StoreFactory", "running_redis"]

StoreFactory = Callable[..., RedisState]
"""``make_store(url=None, **RedisState options)``: a connected store ("a replica")."""

StateFactory = Callable[..., FallbackState]
"""``make_state(replica="r1", metrics=None, lease_ttl=2.0, **FallbackState options)``: a
replica's shared state (not started) on the test's own redis-server, with short intervals
and TTLs."""


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server in ``workdir`` from the start of the block to its end."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
