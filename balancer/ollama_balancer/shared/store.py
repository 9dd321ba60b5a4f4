"""Fleet-wide state in Redis/Valkey, through redis-py's asyncio client (thin I/O).

Every operation is one round trip (a script, or a pipeline of them) bounded by
``op_timeout``; any fault (refused, reset, timeout, an error reply) raises
:class:`StoreUnavailable`, and the fallback wrapper decides what to do.  Reads
come from the in-memory :class:`Mirror`, kept fresh by the events channel and
by :meth:`RedisState.refresh`.

The store is one server, or the primary of a Sentinel service
(:mod:`redis.asyncio.sentinel`): then every new connection asks the sentinels
which node is the primary, so the reconnect after a failover reaches the
promoted replica.  :attr:`RedisState.reconnects` counts connections opened
again, the churn the fallback wrapper is built to avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
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

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared import scripts as S
from ..core.shared.address import StoreAddress
from ..core.shared.keys import Keys
from ..core.shared.mirror import LOADED_MEMORY, Event, Mirror, parse_event, parse_refresh
from ..core.shared.model import (
    Grant,
    Learned,
    Lease,
    QuotaTicket,
    QuotaVerdict,
    SlotFreed,
    field_of,
    member_of,
)
from ..core.shared.protocol import StoreUnavailable
from ..core.shared.quota import ADMITTED, refusal
from ..core.shared.resync import Entry, ReassertPlan
from ..core.shared.signals import AffinityMap, FreedSignal

__all__ = ["Reasserted", "RedisState"]

T = TypeVar("T")

#: EWMA weight of a new measurement (the Ledger's).
EWMA = 0.3
#: Learned times are kept this long after their last update (ms).
LEARN_TTL_MS = 7 * 24 * 3600 * 1000


def _int(x: Any) -> int:
    return int(x)


class RedisState:
    """The shared implementation; see :mod:`ollama_balancer.core.shared.protocol`."""

    def __init__(
        self,
        address: StoreAddress,
        *,
        replica: str,
        keys: Keys | None = None,
        clock: Callable[[], float] = time.monotonic,
        lease_ttl: float = 30.0,
        op_timeout: float = 0.25,
        load_ttl: float = 300.0,
        affinity_ttl: float = 1800.0,
        password_file: str = "",
        ca_file: str = "",
        sentinel_password_file: str = "",
        default_load_seconds: float = 20.0,
        default_service_seconds: float = 5.0,
        signal: FreedSignal | None = None,
        affinities: AffinityMap | None = None,
    ) -> None:
        self.address = address
        self.replica = replica
        self.keys = keys or Keys()
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.op_timeout = op_timeout
        self.load_ttl = load_ttl
        self.affinity_ttl = affinity_ttl
        self.password_file = password_file
        self.ca_file = ca_file
        self.signal = signal or FreedSignal()
        self.affinities = affinities or AffinityMap(clock, ttl=affinity_ttl)
        self.mirror = Mirror(clock, default_load_seconds, default_service_seconds)
        #: Leases this replica's scripts found expired and removed (dead replicas').
        self.reclaimed = 0
        #: Connections opened again (see :meth:`_connected`) and clients made anew after
        #: the first: what ``ollama_fleet_shared_store_reconnects_total`` counts.
        self.reconnects = 0
        self.sentinel_password_file = sentinel_password_file
        self._client: Redis | None = None
        self._sentinel: Sentinel | None = None
        self._clients = 0
        self._seen: weakref.WeakSet[Connection] = weakref.WeakSet()
        #: The store's epoch as last read (None: none, or not read yet).
        self.epoch: str | None = None

    # ------------------------------------------------------------ connection
    def _password(self) -> str | None:
        if self.password_file:
            # Read at every connect: a rotated Secret is picked up on the next reconnect.
            return _read_secret(self.password_file)
        return self.address.password

    async def connect(self) -> None:
        """(Re)connect, check the server answers, load the scripts.

        With a Sentinel address the client asks the sentinels for the service's primary
        before each new connection, so a connect after a failover reaches the new one."""
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
        await self._io(loose(self._client.ping)())  # typed bool | Awaitable before 8
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

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("not connected")
        return self._client

    async def _io(self, aw: Awaitable[T]) -> T:
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
        pipe = self._redis().pipeline(transaction=False)
        for script in S.SCRIPTS:
            pipe.script_load(script.source)
        await self._io(pipe.execute())

    async def _eval(self, script: S.Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self._batch([(script, keys, args)]))[0]

    async def _batch(
        self,
        calls: Sequence[tuple[S.Script, Sequence[str], Sequence[Any]]],
        extra: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Scripts (and ``extra`` plain commands) in one pipeline: one round trip.

        EVALSHA; after a store restart (scripts gone) load them and send again."""
        for attempt in (0, 1):
            pipe = self._redis().pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if extra is not None:
                extra(pipe)
            try:
                return list(await self._io(pipe.execute()))
            except StoreUnavailable as exc:
                if attempt or not isinstance(exc.__cause__, NoScriptError):
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self._io(loose(self._redis().ping)())

    # ------------------------------------------------------------------ reads
    def occupancy(self) -> Occupancy:
        return self.mirror.occupancy()

    def affinity(self, key: str) -> str | None:
        return self.affinities.get(key)

    def status(self) -> dict[str, object]:
        return {"mode": "shared", "store": self.address.redacted(), "replica": self.replica}

    # ------------------------------------------------------------------ slots
    async def acquire(
        self,
        pod: str,
        model: str,
        *,
        slots: int,
        request_id: str,
        cold: bool = False,
        overflow: bool = False,
    ) -> Grant:
        k = self.keys
        member = member_of(self.replica, request_id)
        field = field_of(pod, model)
        granted, held, reclaimed, owns, seq, now = map(
            _int,
            await self._eval(
                S.ACQUIRE,
                [k.lease(pod, model), k.index, k.loads, k.seq],
                [
                    member,
                    int(self.lease_ttl * 1000),
                    slots,
                    int(overflow),
                    int(cold),
                    field,
                    pod,
                    model,
                    k.channel,
                    int(self.load_ttl * 1000),
                ],
            ),
        )
        self.reclaimed += reclaimed
        ev = Event("acq" if granted else "rec", seq, now, pod, model, held, slots)
        if owns:
            ev = Event("acq", seq, now, pod, model, held, slots, member=member)
        if granted or reclaimed:
            self._on_event(ev)
        else:
            self.mirror.apply_held((pod, model), held, seq, strict=False)
        if not granted:
            return Grant(None, held)
        lease = Lease(pod, model, member, slots, request_id, loads=bool(owns), shared=True)
        return Grant(lease, held)

    async def first_byte(self, lease: Lease) -> float | None:
        if not lease.loads:
            return None
        k = self.keys
        done, ms, seq, now = map(
            _int,
            await self._eval(
                S.LOADED,
                [k.loads, k.loaded, k.seq],
                [lease.member, field_of(*lease.key), lease.pod, lease.model, k.channel],
            ),
        )
        if not done:
            return None
        self._on_event(Event("loaded", seq, now, lease.pod, lease.model))
        return ms / 1000.0

    def _release_call(self, lease: Lease) -> tuple[S.Script, list[str], list[Any]]:
        k = self.keys
        return (
            S.RELEASE,
            [k.lease(lease.pod, lease.model), k.index, k.loads, k.seq],
            [lease.member, field_of(*lease.key), lease.pod, lease.model, lease.slots, k.channel],
        )

    def _learn_call(self, model: str, learned: Learned) -> tuple[S.Script, list[str], list[Any]]:
        return (
            S.LEARN,
            [self.keys.learn_load, self.keys.learn_service],
            [
                model,
                _seconds_arg(learned.load_seconds),
                _seconds_arg(learned.service_seconds),
                EWMA,
                LEARN_TTL_MS,
            ],
        )

    def _quota_finish_call(
        self, ticket: QuotaTicket, tokens: int, now_ms: int | None = None
    ) -> tuple[S.Script, list[str], list[Any]]:
        k = self.keys
        return (
            S.QUOTA_FINISH,
            [k.quota_inflight(ticket.key), k.quota_tokens(ticket.key)],
            [ticket.member, ticket.tokens_per_minute, max(0, tokens), "", "", _now_arg(now_ms)],
        )

    def _affinity_cmds(self, key: str, pod: str) -> Callable[[Any], None]:
        def add(pipe: Any) -> None:
            pipe.set(self.keys.affinity(key), pod, px=int(self.affinity_ttl * 1000))
            pipe.publish(self.keys.channel, json.dumps({"k": "aff", "a": key, "p": pod}))

        return add

    async def release(
        self,
        lease: Lease,
        *,
        learned: Learned | None = None,
        affinity: str | None = None,
        quota: QuotaTicket | None = None,
        tokens: int = 0,
    ) -> None:
        calls = [self._release_call(lease)]
        if learned is not None:
            calls.append(self._learn_call(lease.model, learned))
        if quota is not None:
            calls.append(self._quota_finish_call(quota, tokens))
        if affinity is not None:
            self.affinities.put(affinity, lease.pod)
        extra = self._affinity_cmds(affinity, lease.pod) if affinity is not None else None
        replies = await self._batch(calls, extra)
        held, reclaimed, seq, now, aborted = map(_int, replies[0])
        self.reclaimed += reclaimed
        member = lease.member if aborted else ""
        self._on_event(Event("rel", seq, now, lease.pod, lease.model, held, lease.slots, member))

    async def renew(self, entries: Iterable[Entry]) -> int:
        """Push the expiry of ``entries`` one TTL ahead, re-adding missing ones."""
        args: list[Any] = [int(self.lease_ttl * 1000)]
        for e in entries:
            args += [e.key, e.member, e.field]
        if len(args) == 1:
            return 0
        return _int(await self._eval(S.RENEW, [self.keys.index], args))

    async def remove(self, entries: Iterable[Entry]) -> None:
        pipe = self._redis().pipeline(transaction=False)
        n = 0
        for e in entries:
            pipe.zrem(e.key, e.member)
            n += 1
        if n:
            await self._io(pipe.execute())

    # ------------------------------------------------------------------ loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        key = self.keys.load_lock(model)
        ok = await self._io(self._redis().set(key, owner, nx=True, px=max(1, int(ttl * 1000))))
        return bool(ok)

    async def unlock_load(self, model: str, owner: str) -> None:
        await self._eval(S.UNLOCK, [self.keys.load_lock(model)], [owner, self.keys.channel, model])

    async def refresh(self) -> None:
        """Read everything into the mirror (one round trip, the store's epoch with it)."""
        k = self.keys
        reply, epoch = await self._batch(
            [
                (
                    S.SNAPSHOT,
                    [k.index, k.loads, k.loaded, k.penalties, k.learn_load, k.learn_service, k.seq],
                    [k.lease_prefix, k.channel, int(LOADED_MEMORY * 1000)],
                )
            ],
            lambda pipe: pipe.get(k.epoch),
        )
        self.epoch = _text_or_none(epoch)
        r = parse_refresh(reply)
        self.reclaimed += r.reclaimed
        for freed in self.mirror.apply_refresh(r):
            self.signal.notify(freed)

    async def reassert(self, plan: ReassertPlan, candidate: str) -> Reasserted:
        """Write back what the store lacks of ``plan`` (one script); set the epoch to
        ``candidate`` if the store has none."""
        k = self.keys
        args: list[Any] = [candidate, LEARN_TTL_MS, int(self.load_ttl * 1000)]
        args += [len(plan.loads), len(plan.loaded)]
        for load in plan.loads:
            args += [load.field, load.member, load.age_ms]
        for done in plan.loaded:
            args += [done.field, done.age_ms]
        for x in plan.learned:
            args += [x.model, _seconds_arg(x.load_seconds), _seconds_arg(x.service_seconds)]
        created, epoch, loads, loaded, learned = await self._eval(
            S.REASSERT, [k.loads, k.loaded, k.learn_load, k.learn_service, k.epoch], args
        )
        self.epoch = _text_or_none(epoch)
        return Reasserted(bool(created), self.epoch or "", int(loads), int(loaded), int(learned))

    # ------------------------------------------------------- learning, memory
    async def learn(self, model: str, learned: Learned) -> None:
        await self._batch([self._learn_call(model, learned)])

    async def penalise(self, pod: str, seconds: float) -> None:
        k = self.keys
        await self._eval(
            S.PENALISE, [k.penalties, k.seq], [pod, max(1, int(seconds * 1000)), k.channel]
        )

    async def clear_penalty(self, pod: str) -> None:
        # Called after every good answer: cost a round trip only when there is one.
        if self.pod_penalised(pod):
            k = self.keys
            await self._eval(S.UNPENALISE, [k.penalties, k.seq], [pod, k.channel])

    def pod_penalised(self, pod: str) -> bool:
        return pod in self.mirror.occupancy().penalties

    async def remember(self, key: str, pod: str) -> None:
        self.affinities.put(key, pod)
        pipe = self._redis().pipeline(transaction=False)
        self._affinity_cmds(key, pod)(pipe)
        await self._io(pipe.execute())

    async def recall(self, key: str) -> str | None:
        """The stored pod of ``key`` (one GET): for a replica that started after it was set."""
        raw = await self._io(self._redis().get(self.keys.affinity(key)))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    # ------------------------------------------------------------------ quotas
    async def admit(self, key: ApiKey, request_id: str, now_ms: int | None = None) -> QuotaVerdict:
        k = self.keys
        member = member_of(self.replica, request_id)
        code, wait_ms = map(
            _int,
            await self._eval(
                S.QUOTA_ADMIT,
                [k.quota_inflight(key.name), k.quota_requests(key.name), k.quota_tokens(key.name)],
                [
                    member,
                    key.max_concurrent,
                    key.requests_per_minute,
                    key.tokens_per_minute,
                    int(self.lease_ttl * 1000),
                    _now_arg(now_ms),
                ],
            ),
        )
        if code != ADMITTED:
            reason, retry_after = refusal(code, key, wait_ms / 1000.0)
            return QuotaVerdict(None, reason, retry_after)
        return QuotaVerdict(QuotaTicket(key.name, member, key.tokens_per_minute, shared=True))

    async def finish_quota(
        self, ticket: QuotaTicket, tokens: int = 0, now_ms: int | None = None
    ) -> None:
        await self._batch([self._quota_finish_call(ticket, tokens, now_ms)])

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Event) -> None:
        if ev.kind == "aff":
            self.affinities.put(ev.key, ev.pod)
            return
        freed = self.mirror.apply_event(ev)
        if freed is not None:
            self.signal.notify(freed)

    async def listen(self, subscribed: asyncio.Event | None = None) -> None:
        """Apply the events channel until the connection fails (raises StoreUnavailable)."""
        pubsub: PubSub = self._redis().pubsub(ignore_subscribe_messages=True)
        try:
            await self._io(pubsub.subscribe(self.keys.channel))
            if subscribed is not None:
                subscribed.set()
            while True:
                try:
                    msg = await pubsub.get_message(timeout=1.0)
                except (RedisError, OSError) as exc:
                    raise StoreUnavailable(f"events channel: {type(exc).__name__}: {exc}") from exc
                if msg is None or msg.get("type") != "message":
                    continue
                ev = parse_event(msg["data"])
                if ev is not None:
                    self._on_event(ev)
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(loose(pubsub.aclose)(), self.op_timeout * 4)

    # ------------------------------------------------------- slot-freed signal
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]:
        return self.signal.subscribe(listener)

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None:
        return await self.signal.wait(model, timeout)

    async def start(self) -> None:
        await self.connect()


@dataclass(frozen=True, slots=True)
class Reasserted:
    """What :meth:`RedisState.reassert` found and wrote."""

    created: bool
    """The store had no epoch: it was empty (or new), and this replica's candidate is it."""
    epoch: str
    loads: int
    loaded: int
    learned: int


def _seconds_arg(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _text_or_none(x: Any) -> str | None:
    return None if x is None else (x.decode() if isinstance(x, bytes) else str(x))


def _no_primary(service: str, exc: MasterNotFoundError) -> str:
    """redis-py's message quotes each sentinel client's repr: keep what each one said."""
    # "<client repr> - network:ConnectionError: ..." per sentinel; the category is lower case
    said = re.findall(r" - (?:[a-z]+:)?(.+?)(?=, <redis|$)", str(exc))
    return f"the sentinels name no primary of {service!r}" + (
        f": {'; '.join(said)}" if said else ""
    )


def _read_secret(path: str) -> str | None:
    return Path(path).read_text(encoding="utf-8").strip() or None


def _now_arg(now_ms: int | None) -> str:
    """Scripts use the server's clock unless a test pins it."""
    return "" if now_ms is None else str(int(now_ms))
