"""Fleet-wide state in Redis/Valkey, through redis-py's asyncio client (thin I/O).

Every operation is one round trip (a script, or a pipeline of them) bounded by
``op_timeout`` (:mod:`.connection`); any fault (refused, reset, timeout, an error
reply) raises :class:`StoreUnavailable`, and the fallback wrapper decides what to do.
Reads come from the in-memory :class:`Mirror`, kept fresh by the events channel and
by :meth:`RedisState.refresh`.  The scheduler's board is fleet-wide here: a lease's
holder document and its fair-share charge ride in the acquire and release scripts, the
rest of the board's operations are :mod:`.boardstore`'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared import scripts as S
from ..core.shared.address import StoreAddress
from ..core.shared.board import Board, Charge, SlotHolder
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
from ..core.shared.quota import ADMITTED, refusal
from ..core.shared.resync import Entry
from ..core.shared.signals import AffinityMap, FreedSignal
from .boardstore import BoardStore, charge_args
from .connection import Call, StoreConnection

__all__ = ["EWMA", "LEARN_TTL_MS", "RedisState", "loaded_call", "release_call", "seconds_arg"]

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
        self.connection = StoreConnection(
            address,
            replica=replica,
            op_timeout=op_timeout,
            password_file=password_file,
            ca_file=ca_file,
            sentinel_password_file=sentinel_password_file,
        )
        self.signal = signal or FreedSignal()
        self.affinities = affinities or AffinityMap(clock, ttl=affinity_ttl)
        self.mirror = Mirror(clock, default_load_seconds, default_service_seconds)
        #: Leases this replica's scripts found expired and removed (dead replicas').
        self.reclaimed = 0
        #: The store's epoch as last read (None: none; see ``resync.store_lost``).
        self.epoch: str | None = None
        #: The scheduler's board: its waiting list, reclaims and re-assertion.
        self.boards = BoardStore(
            self.connection,
            self.keys,
            self.mirror,
            replica=replica,
            clock=clock,
            lease_ttl=lease_ttl,
            notify=lambda freed: self.signal.notify(freed),  # the signal may be replaced
        )

    # ------------------------------------------------------------ connection
    async def connect(self) -> None:
        """(Re)connect, check the server answers, load the scripts."""
        await self.connection.connect()

    async def close(self) -> None:
        await self.connection.close()

    async def ping(self) -> None:
        await self.connection.ping()

    # ------------------------------------------------------------------ reads
    def occupancy(self) -> Occupancy:
        return self.mirror.occupancy()

    def affinity(self, key: str) -> str | None:
        return self.affinities.get(key)

    def status(self) -> dict[str, object]:
        return {"mode": "shared", "store": self.address.redacted(), "replica": self.replica}

    def board(self) -> Board:
        return self.boards.board()

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
        holder: SlotHolder | None = None,
        charge: Charge | None = None,
    ) -> Grant:
        k = self.keys
        member = member_of(self.replica, request_id)
        board = self.boards.acquire_args(pod, model, request_id, member, holder, charge)
        ttls = (int(self.lease_ttl * 1000), int(self.load_ttl * 1000))
        call = _acquire_call(k, pod, model, member, (slots, overflow, cold), ttls, board)
        async with self.boards.in_order(request_id):  # it ends the request's wait: after a post
            reply = await self.connection.eval(*call)
        granted, held, reclaimed, owns, seq, now = map(_int, reply[:6])
        self.reclaimed += reclaimed
        ev = parse_event(reply[6]) if len(reply) > 6 else None  # the one the others receive
        if granted:
            self._on_event(ev or Event("acq", seq, now, pod, model, held, slots))
        else:
            if ev is not None or reclaimed:
                self._on_event(ev or Event("rec", seq, now, pod, model, held, slots))
            self.mirror.apply_held((pod, model), held, seq, strict=False)
        if not granted:
            return Grant(None, held)
        lease = Lease(pod, model, member, slots, request_id, loads=bool(owns), shared=True)
        return Grant(lease, held)

    async def first_byte(self, lease: Lease) -> float | None:
        board = self.boards.first_byte_call(lease)
        calls = [] if board is None else [board]
        if lease.loads:
            calls.append(loaded_call(self.keys, lease))
        replies = await self.connection.batch(calls) if calls else []
        if board is not None:
            self.boards.apply_reply(replies[0])
        if not lease.loads:
            return None
        done, ms, seq, now = map(_int, replies[-1])
        if not done:
            return None
        self._on_event(Event("loaded", seq, now, lease.pod, lease.model))
        return ms / 1000.0

    async def release(
        self,
        lease: Lease,
        *,
        learned: Learned | None = None,
        affinity: str | None = None,
        quota: QuotaTicket | None = None,
        tokens: int = 0,
        charge: Charge | None = None,
    ) -> None:
        k = self.keys
        calls = [release_call(k, lease, charge)]
        if learned is not None:
            calls.append(_learn_call(k, lease.model, learned))
        if quota is not None:
            calls.append(_quota_finish_call(k, quota, tokens))
        extra = None
        if affinity is not None:
            self.affinities.put(affinity, lease.pod)
            extra = _affinity_cmds(k, affinity, lease.pod, self.affinity_ttl)
        replies = await self.connection.batch(calls, extra)
        held, reclaimed, seq, now, aborted = map(_int, replies[0][:5])
        self.reclaimed += reclaimed
        member = lease.member if aborted else ""
        ev = Event("rel", seq, now, lease.pod, lease.model, held, lease.slots, member)
        self.boards.released(lease)
        self._on_event(parse_event(replies[0][5]) or ev)  # the script's own event

    async def renew(self, entries: Iterable[Entry]) -> int:
        """Push the expiry of ``entries`` one TTL ahead, re-adding missing ones."""
        args: list[Any] = [int(self.lease_ttl * 1000)]
        for e in entries:
            args += [e.key, e.member, e.field]
        if len(args) == 1:
            return 0
        return _int(await self.connection.eval(S.RENEW, [self.keys.index], args))

    async def remove(self, entries: Iterable[Entry]) -> None:
        pipe = self.connection.client().pipeline(transaction=False)
        n = 0
        for e in entries:
            pipe.zrem(e.key, e.member)
            n += 1
        if n:
            await self.connection.io(pipe.execute())

    # ------------------------------------------------------------------ loads
    async def lock_load(self, model: str, owner: str, ttl: float) -> bool:
        key = self.keys.load_lock(model)
        ok = await self.connection.io(
            self.connection.client().set(key, owner, nx=True, px=max(1, int(ttl * 1000)))
        )
        return bool(ok)

    async def unlock_load(self, model: str, owner: str) -> None:
        await self.connection.eval(
            S.UNLOCK, [self.keys.load_lock(model)], [owner, self.keys.channel, model]
        )

    async def forget_loaded(self, pod: str, model: str) -> None:
        if await self.connection.eval(*_forget_call(self.keys, pod, model)):
            self._on_event(Event("forget", 0, 0, pod, model))

    async def refresh(self) -> None:
        """Read everything into the mirror (one round trip, the store's epoch with it)."""
        k = self.keys
        reply, board = await self.connection.batch([_snapshot_call(k), self.boards.refresh_call()])
        r = parse_refresh(reply)
        self.reclaimed += r.reclaimed
        for freed in self.mirror.apply_refresh(r):
            self.signal.notify(freed)
        await self.boards.refreshed(board)
        # the board's read carries the epoch (and sets one on a store that has none)
        self.epoch = self.mirror.board.epoch

    # ------------------------------------------------------- learning, memory
    async def learn(self, model: str, learned: Learned) -> None:
        await self.connection.batch([_learn_call(self.keys, model, learned)])

    async def penalise(self, pod: str, seconds: float) -> None:
        k = self.keys
        await self.connection.eval(
            S.PENALISE, [k.penalties, k.seq], [pod, max(1, int(seconds * 1000)), k.channel]
        )

    async def clear_penalty(self, pod: str) -> None:
        # Called after every good answer: cost a round trip only when there is one.
        if self.pod_penalised(pod):
            k = self.keys
            await self.connection.eval(S.UNPENALISE, [k.penalties, k.seq], [pod, k.channel])

    def pod_penalised(self, pod: str) -> bool:
        return pod in self.mirror.occupancy().penalties

    async def remember(self, key: str, pod: str) -> None:
        self.affinities.put(key, pod)
        pipe = self.connection.client().pipeline(transaction=False)
        _affinity_cmds(self.keys, key, pod, self.affinity_ttl)(pipe)
        await self.connection.io(pipe.execute())

    async def recall(self, key: str) -> str | None:
        """The stored pod of ``key`` (one GET): for a replica that started after it was set."""
        raw = await self.connection.io(self.connection.client().get(self.keys.affinity(key)))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    # ------------------------------------------------------------------ quotas
    async def admit(self, key: ApiKey, request_id: str, now_ms: int | None = None) -> QuotaVerdict:
        k = self.keys
        member = member_of(self.replica, request_id)
        code, wait_ms = map(
            _int,
            await self.connection.eval(
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
        await self.connection.batch([_quota_finish_call(self.keys, ticket, tokens, now_ms)])

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Event) -> None:
        if ev.kind == "aff":
            self.affinities.put(ev.key, ev.pod)
            return
        freed = self.mirror.apply_event(ev)
        if freed is not None:
            self.signal.notify(freed)
        self.boards.apply(ev)

    async def listen(self, subscribed: asyncio.Event | None = None) -> None:
        """Apply the events channel until the connection fails (raises StoreUnavailable)."""
        await self.connection.listen(self.keys.channel, self._on_message, subscribed)

    def _on_message(self, data: bytes | str) -> None:
        ev = parse_event(data)
        if ev is not None:
            self._on_event(ev)

    # ------------------------------------------------------- slot-freed signal
    def on_slot_freed(self, listener: Callable[[SlotFreed], None]) -> Callable[[], None]:
        return self.signal.subscribe(listener)

    async def wait_slot_freed(self, model: str, timeout: float) -> SlotFreed | None:
        return await self.signal.wait(model, timeout)

    async def start(self) -> None:
        await self.connect()


def _snapshot_call(k: Keys) -> Call:
    return (
        S.SNAPSHOT,
        [k.index, k.loads, k.loaded, k.penalties, k.learn_load, k.learn_service, k.seq],
        [k.lease_prefix, k.channel, int(LOADED_MEMORY * 1000)],
    )


def _forget_call(k: Keys, pod: str, model: str) -> Call:
    return (S.FORGET, [k.loaded, k.seq], [field_of(pod, model), pod, model, k.channel])


def _acquire_call(
    k: Keys,
    pod: str,
    model: str,
    member: str,
    how: tuple[int, bool, bool],
    ttls: tuple[int, int],
    board: tuple[list[str], list[Any]],
) -> Call:
    """``how``: slots, overflow, cold; ``ttls``: the lease's and a load's (ms); ``board``: the
    board's keys and arguments (:meth:`BoardStore.acquire_args`)."""
    slots, overflow, cold = how
    return (
        S.ACQUIRE,
        [k.lease(pod, model), k.index, k.loads, k.seq, *board[0]],
        [
            *(member, ttls[0], slots, int(overflow), int(cold), field_of(pod, model), pod, model),
            *(k.channel, ttls[1], *board[1]),
        ],
    )


def loaded_call(k: Keys, lease: Lease) -> Call:
    """The load ``lease`` started is over (its first byte came)."""
    return (
        S.LOADED,
        [k.loads, k.loaded, k.seq],
        [lease.member, field_of(*lease.key), lease.pod, lease.model, k.channel],
    )


def release_call(k: Keys, lease: Lease, charge: Charge | None = None) -> Call:
    """``lease`` given back (the load it started, if still under way, abandoned with it; its
    holder document with it, its tenant charged ``charge``)."""
    pod, model = lease.key
    return (
        S.RELEASE,
        [
            *(k.lease(pod, model), k.index, k.loads, k.seq),
            *(k.holders(pod, model), k.holder_index, k.reclaiming, k.fair),
        ],
        [
            *(lease.member, field_of(pod, model), pod, model, lease.slots, k.channel),
            *charge_args(charge),
        ],
    )


def seconds_arg(x: float | None) -> str:
    """A number of seconds as a script argument; '' for none."""
    return "" if x is None else repr(float(x))


def _learn_call(k: Keys, model: str, learned: Learned) -> Call:
    return (
        S.LEARN,
        [k.learn_load, k.learn_service],
        [
            model,
            seconds_arg(learned.load_seconds),
            seconds_arg(learned.service_seconds),
            EWMA,
            LEARN_TTL_MS,
        ],
    )


def _quota_finish_call(
    k: Keys, ticket: QuotaTicket, tokens: int, now_ms: int | None = None
) -> Call:
    return (
        S.QUOTA_FINISH,
        [k.quota_inflight(ticket.key), k.quota_tokens(ticket.key)],
        [ticket.member, ticket.tokens_per_minute, max(0, tokens), "", "", _now_arg(now_ms)],
    )


def _affinity_cmds(k: Keys, key: str, pod: str, ttl: float) -> Callable[[Any], None]:
    def add(pipe: Any) -> None:
        pipe.set(k.affinity(key), pod, px=int(ttl * 1000))
        pipe.publish(k.channel, json.dumps({"k": "aff", "a": key, "p": pod}))

    return add


def _now_arg(now_ms: int | None) -> str:
    """Scripts use the server's clock unless a test pins it."""
    return "" if now_ms is None else str(int(now_ms))
