"""One connection to Redis/Valkey for the shared state: connect (password file, TLS), and
every call one round trip bounded by ``op_timeout`` whose fault is a
:class:`~ollama_balancer.core.shared.protocol.StoreUnavailable`.

Scripts are loaded at connect and sent by digest (EVALSHA); after a store restart that
lost them, they are loaded again and the batch is sent once more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
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
    ) -> None:
        self.address = address
        self.replica = replica
        self.op_timeout = op_timeout
        self.password_file = password_file
        self.ca_file = ca_file
        self._client: Redis | None = None

    def _password(self) -> str | None:
        if self.password_file:
            # Read at every connect: a rotated Secret is picked up on the next reconnect.
            return Path(self.password_file).read_text(encoding="utf-8").strip() or None
        return self.address.password

    async def connect(self) -> None:
        """(Re)connect, check the server answers, load the scripts."""
        await self.close()
        a = self.address
        try:
            password = self._password()
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the password file: {exc}") from exc
        # No retries inside the client: a fault must surface at once so the wrapper
        # switches to local state; it reconnects on its own schedule.
        self._client = Redis(
            host=a.host,
            port=a.port,
            db=a.db,
            username=a.username,
            password=password,
            ssl=a.tls,
            ssl_ca_certs=self.ca_file or None,
            socket_timeout=max(1.0, self.op_timeout * 4),
            socket_connect_timeout=max(1.0, self.op_timeout * 4),
            retry=Retry(NoBackoff(), 0),
            client_name=f"ollama-fleet:{self.replica}"[:64].replace(" ", "_"),
        )
        await self.io(loose(self._client.ping)())  # typed bool | Awaitable before 8
        await self._load_scripts()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(client.aclose(), self.op_timeout * 4)

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
