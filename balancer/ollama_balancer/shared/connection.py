"""One connection to Redis/Valkey for the shared state: connect (password file, TLS), and
every call one round trip bounded by ``op_timeout`` whose fault is a
:class:`~ollama_balancer.core.shared.protocol.StoreUnavailable`.

Scripts are loaded at connect and sent by digest (EVALSHA); after a store restart that
lost them, they are loaded again and the batch is sent once more.

The store is one server, or the primary of a Sentinel service
(:mod:`redis.asyncio.sentinel`): then every new connection asks the sentinels which node
is the primary, so the reconnect after a failover reaches the promoted replica.
:attr:`StoreConnection.reconnects` counts connections opened again, the churn the
fallback wrapper is built to avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ollama_wire.loose import loose

from ..core.shared import scripts as S
from ..core.shared.address import StoreAddress
from ..core.shared.protocol import StoreUnavailable

__all__ = ["Call", "StoreConnection"]

T = TypeVar("T")

#: One script call: the script, its keys, its arguments.
Call = tuple[S.Script, Sequence[str], Sequence[Any]]


class StoreConnection:
    """The client of one replica (``replica`` names it to the server)."""

    def __init__(
        self,
        address: StoreAddress,
        *,
        replica: str,
        op_timeout: float = 0.25,
        password_file: str = "",
        ca_file: str = "",
        sentinel_password_file: str = "",
    ) -> None:
        self.address = address
        self.replica = replica
        self.op_timeout = op_timeout
        self.password_file = password_file
        self.ca_file = ca_file
        self.sentinel_password_file = sentinel_password_file
        #: Connections opened again (see :meth:`_connected`) and clients made anew after
        #: the first: what ``ollama_fleet_shared_store_reconnects_total`` counts.
        self.reconnects = 0
        self._client: Redis | None = None
        self._sentinel: Sentinel | None = None
        self._clients = 0
        self._seen: weakref.WeakSet[Connection] = weakref.WeakSet()

    def _password(self) -> str | None:
        if self.password_file:
            # Read at every connect: a rotated Secret is picked up on the next reconnect.
            return _read_secret(self.password_file)
        return self.address.password

    async def connect(self) -> None:
        """(Re)connect, check the server answers, load the scripts."""
        await self.close()
        a = self.address
        try:
            password = self._password()
            sentinel_password = (
                _read_secret(self.sentinel_password_file) if self.sentinel_password_file else None
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the password file: {exc}") from exc
        timeout = max(1.0, self.op_timeout * 4)
        # No retries inside the client: a fault must surface at once so the wrapper
        # switches to local state; it reconnects on its own schedule.
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if a.tls:  # a plain connection refuses TLS options, even empty ones
            common.update(ssl=True, ssl_ca_certs=self.ca_file or None)
        node: dict[str, Any] = {
            **common,
            "db": a.db,
            "username": a.username,
            "password": password,
            "client_name": f"ollama-fleet:{self.replica}"[:64].replace(" ", "_"),
            "redis_connect_func": self._connected,
        }
        if a.sentinel:
            self._sentinel = Sentinel(
                list(a.sentinels), sentinel_kwargs={**common, "password": sentinel_password}
            )
            self._client = self._sentinel.master_for(a.service, **node)
        else:
            self._client = Redis(host=a.host, port=a.port, **node)
        await self.io(loose(self._client.ping)())  # typed bool | Awaitable before 8
        await self._load_scripts()
        if self._clients:
            self.reconnects += 1  # a new client after an outage or a failover
        self._clients += 1

    async def _connected(self, conn: Connection) -> None:
        """redis-py's hook after each new connection's socket: finish the handshake, count.

        A connection object seen before is one redis-py dropped (a command cancelled or
        timed out mid-reply, a server gone) and opens again: a reconnect."""
        await conn.on_connect()
        if conn in self._seen:
            self.reconnects += 1
        self._seen.add(conn)

    async def close(self) -> None:
        client, self._client = self._client, None
        sentinel, self._sentinel = self._sentinel, None
        self._seen = weakref.WeakSet()
        if client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(client.aclose(), self.op_timeout * 4)
        if sentinel is not None:
            for one in sentinel.sentinels:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(one.aclose(), self.op_timeout * 4)

    def client(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("not connected")
        return self._client

    async def io(self, aw: Awaitable[T]) -> T:
        """``aw`` within the op timeout; any fault as :class:`StoreUnavailable`."""
        try:
            async with asyncio.timeout(self.op_timeout):
                return await aw
        except TimeoutError as exc:
            raise StoreUnavailable(f"no answer within {self.op_timeout:g}s") from exc
        except MasterNotFoundError as exc:
            raise StoreUnavailable(_no_primary(self.address.service, exc)) from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _load_scripts(self) -> None:
        pipe = self.client().pipeline(transaction=False)
        for script in S.SCRIPTS:
            pipe.script_load(script.source)
        await self.io(pipe.execute())

    async def eval(self, script: S.Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self.batch([(script, keys, args)]))[0]

    async def batch(
        self, calls: Sequence[Call], extra: Callable[[Any], None] | None = None
    ) -> list[Any]:
        """Scripts (and ``extra`` plain commands) in one pipeline: one round trip."""
        for attempt in (0, 1):
            pipe = self.client().pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if extra is not None:
                extra(pipe)
            try:
                return list(await self.io(pipe.execute()))
            except StoreUnavailable as exc:
                if attempt or not isinstance(exc.__cause__, NoScriptError):
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self.io(loose(self.client().ping)())

    async def listen(
        self,
        channel: str,
        on_message: Callable[[bytes | str], None],
        subscribed: asyncio.Event | None = None,
    ) -> None:
        """Hand every message of ``channel`` to ``on_message`` until the connection fails
        (raises :class:`StoreUnavailable`); ``subscribed`` is set once subscribed."""
        pubsub: PubSub = self.client().pubsub(ignore_subscribe_messages=True)
        try:
            await self.io(pubsub.subscribe(channel))
            if subscribed is not None:
                subscribed.set()
            while True:
                try:
                    msg = await pubsub.get_message(timeout=1.0)
                except (RedisError, OSError) as exc:
                    raise StoreUnavailable(f"events channel: {type(exc).__name__}: {exc}") from exc
                if msg is not None and msg.get("type") == "message":
                    on_message(msg["data"])
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(loose(pubsub.aclose)(), self.op_timeout * 4)


def _read_secret(path: str) -> str | None:
    return Path(path).read_text(encoding="utf-8").strip() or None


def _no_primary(service: str, exc: MasterNotFoundError) -> str:
    """redis-py's message quotes each sentinel client's repr: keep what each one said."""
    # "<client repr> - network:ConnectionError: ..." per sentinel; the category is lower case
    said = re.findall(r" - (?:[a-z]+:)?(.+?)(?=, <redis|$)", str(exc))
    return f"the sentinels name no primary of {service!r}" + (
        f": {'; '.join(said)}" if said else ""
    )
