"""Fleet-wide state in Redis/Valkey, through redis-py's asyncio client (thin I/O).

Every operation is one round trip (a script, or a pipeline of them) bounded by
``op_timeout``; any fault (refused, reset, timeout, an error reply) raises
:class:`StoreUnavailable`, and the fallback wrapper decides what to do.  Reads
come from the in-memory :class:`Mirror`, kept fresh by the events channel and
by :meth:`RedisState.refresh`.

The scheduler's board is fleet-wide here: a lease's holder document and its
fair-share charge travel inside the acquire and release scripts, waiting
requests are posted and dropped with one script each (and kept alive by the
replica's renewal, :meth:`RedisState.reassert`), and a reclaim marks its victim
and promises its seat atomically; the victim's replica, whichever it is, hears
of it on the events channel and calls its :meth:`RedisState.on_preempt`
listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ollama_wire.loose import loose

from ..core.auth import ApiKey
from ..core.occupancy import Occupancy
from ..core.shared import scripts as S
from ..core.shared.address import StoreAddress
from ..core.shared.board import (
    Board,
    Charge,
    CounterKey,
    Reservation,
    SlotHolder,
    Waiter,
    holder_doc,
    waiter_doc,
)
from ..core.shared.boardmirror import counter_field, parse_board_refresh
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
from ..core.shared.resync import Entry
from ..core.shared.signals import AffinityMap, FreedSignal

__all__ = ["RedisState"]

T = TypeVar("T")

#: EWMA weight of a new measurement (the Ledger's).
EWMA = 0.3
#: Learned times are kept this long after their last update (ms).
LEARN_TTL_MS = 7 * 24 * 3600 * 1000
#: Fair-share counters too: a week without a charge forgets a tenant's place.
FAIR_TTL_MS = LEARN_TTL_MS


def _int(x: Any) -> int:
    return int(x)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


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
        self._client: Redis | None = None
        self._preempt: list[Callable[[str], None]] = []
        #: Own leases whose preempt listeners were called (once per lease).
        self._signalled: set[str] = set()
        #: request id -> (lock, users): one waiting-list operation at a time per request.
        self._waiting_ops: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # ------------------------------------------------------------ connection
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
        await self._io(loose(self._client.ping)())  # typed bool | Awaitable before 8
        await self._load_scripts()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(client.aclose(), self.op_timeout * 4)

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

    def board(self) -> Board:
        return self.mirror.board.book.board(self.clock())

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
        field = field_of(pod, model)
        doc = ""
        if holder is not None:
            h = replace(
                holder,
                member=member,
                pod=pod,
                model=model,
                replica=self.replica,
                request_id=request_id,
            )
            doc = _json(holder_doc(h, 0))  # the script sets the start: the server's now
        async with self._in_order(request_id):  # it ends the request's wait: after a post
            reply = await self._eval(
                S.ACQUIRE,
                [
                    k.lease(pod, model),
                    k.index,
                    k.loads,
                    k.seq,
                    k.holders(pod, model),
                    k.holder_index,
                    k.waiting,
                    k.waiters,
                    k.promises,
                    k.fair,
                ],
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
                    request_id,
                    doc,
                    *_charge_args(charge),
                ],
            )
        granted, held, reclaimed, owns, seq, now = map(_int, reply[:6])
        self.reclaimed += reclaimed
        ev = Event("acq" if granted else "rec", seq, now, pod, model, held, slots)
        if owns:
            ev = Event("acq", seq, now, pod, model, held, slots, member=member)
        if granted and len(reply) > 6:
            ev = parse_event(reply[6]) or ev  # the same event the others receive
        if granted or reclaimed:
            self._on_event(ev)
        else:
            self.mirror.apply_held((pod, model), held, seq, strict=False)
        if not granted:
            return Grant(None, held)
        lease = Lease(pod, model, member, slots, request_id, loads=bool(owns), shared=True)
        return Grant(lease, held)

    async def first_byte(self, lease: Lease) -> float | None:
        k = self.keys
        holder = self.mirror.board.book.holder(lease.member)
        board = holder is not None and holder.first_byte is None
        calls: list[tuple[S.Script, list[str], list[Any]]] = []
        if board:
            calls.append((S.FIRST_BYTE, [k.holders(*lease.key), k.seq], [lease.member, k.channel]))
        if lease.loads:
            calls.append(
                (
                    S.LOADED,
                    [k.loads, k.loaded, k.seq],
                    [lease.member, field_of(*lease.key), lease.pod, lease.model, k.channel],
                )
            )
        if not calls:
            return None
        replies = await self._batch(calls)
        if board:
            self._apply_reply(replies[0])
        if not lease.loads:
            return None
        done, ms, seq, now = map(_int, replies[-1])
        if not done:
            return None
        self._on_event(Event("loaded", seq, now, lease.pod, lease.model))
        return ms / 1000.0

    def _release_call(
        self, lease: Lease, charge: Charge | None = None
    ) -> tuple[S.Script, list[str], list[Any]]:
        k = self.keys
        return (
            S.RELEASE,
            [
                k.lease(lease.pod, lease.model),
                k.index,
                k.loads,
                k.seq,
                k.holders(lease.pod, lease.model),
                k.holder_index,
                k.reclaiming,
                k.fair,
            ],
            [
                lease.member,
                field_of(*lease.key),
                lease.pod,
                lease.model,
                lease.slots,
                k.channel,
                *_charge_args(charge),
            ],
        )

    def _learn_call(self, model: str, learned: Learned) -> tuple[S.Script, list[str], list[Any]]:
        def arg(x: float | None) -> str:
            return "" if x is None else repr(float(x))

        return (
            S.LEARN,
            [self.keys.learn_load, self.keys.learn_service],
            [model, arg(learned.load_seconds), arg(learned.service_seconds), EWMA, LEARN_TTL_MS],
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
        charge: Charge | None = None,
    ) -> None:
        calls = [self._release_call(lease, charge)]
        if learned is not None:
            calls.append(self._learn_call(lease.model, learned))
        if quota is not None:
            calls.append(self._quota_finish_call(quota, tokens))
        if affinity is not None:
            self.affinities.put(affinity, lease.pod)
        extra = self._affinity_cmds(affinity, lease.pod) if affinity is not None else None
        replies = await self._batch(calls, extra)
        held, reclaimed, seq, now, aborted = map(_int, replies[0][:5])
        self.reclaimed += reclaimed
        member = lease.member if aborted else ""
        ev = Event("rel", seq, now, lease.pod, lease.model, held, lease.slots, member)
        if len(replies[0]) > 5:
            ev = parse_event(replies[0][5]) or ev
        self._signalled.discard(lease.member)
        self._on_event(ev)

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
        k = self.keys
        reply, board = await self._batch(
            [
                (
                    S.SNAPSHOT,
                    [k.index, k.loads, k.loaded, k.penalties, k.learn_load, k.learn_service, k.seq],
                    [k.lease_prefix, k.channel, int(LOADED_MEMORY * 1000)],
                ),
                (
                    S.BOARD,
                    [
                        k.holder_index,
                        k.waiting,
                        k.waiters,
                        k.promises,
                        k.reclaiming,
                        k.fair,
                        k.seq,
                        k.epoch,
                    ],
                    [k.lease_prefix, k.holder_prefix],
                ),
            ]
        )
        r = parse_refresh(reply)
        self.reclaimed += r.reclaimed
        for freed in self.mirror.apply_refresh(r):
            self.signal.notify(freed)
        book = self.mirror.board
        if book.apply_refresh(parse_board_refresh(board), self.mirror.local_time):
            # The store lost its data: nobody else can give the fair-share clock back.
            await self.reassert(counters=self.board().counters)
        now = self.board()
        self._signalled &= set(now.holders)
        for member in now.reclaiming:  # a reclaim whose event this replica missed
            self._preempted(member)

    # ------------------------------------------- the scheduler's waiting list, reclaims
    def _waiter_doc(self, w: Waiter, now: float) -> str:
        deadline = None if w.deadline is None else _ms(w.deadline - now)
        return _json(waiter_doc(w, _ms(now - w.arrival), deadline))

    @contextlib.asynccontextmanager
    async def _in_order(self, request_id: str) -> AsyncIterator[None]:
        """A request's waiting-list operations reach the store in the order they were called.

        Callers run them as tasks of their own, and redis-py sends concurrent commands on
        different connections (a new one first connects): a drop overtaking its post would
        leave the request on every replica's board until its entry expired."""
        entry = self._waiting_ops.get(request_id)
        if entry is None:
            entry = self._waiting_ops[request_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._waiting_ops[request_id]

    async def post_waiter(self, waiter: Waiter) -> None:
        k = self.keys
        async with self._in_order(waiter.request_id):
            text = await self._eval(
                S.POST_WAITER,
                [k.waiting, k.waiters, k.seq],
                [
                    waiter.request_id,
                    self._waiter_doc(waiter, self.clock()),
                    int(self.lease_ttl * 1000),
                    k.channel,
                ],
            )
        self._apply_reply(text)

    async def drop_waiter(self, request_id: str) -> None:
        async with self._in_order(request_id):
            await self.drop_waiters([request_id])

    async def drop_waiters(self, request_ids: Iterable[str]) -> None:
        """:meth:`drop_waiter` for each, in one round trip."""
        k = self.keys
        calls = [
            (
                S.DROP_WAITER,
                [k.waiting, k.waiters, k.promises, k.seq],
                [q, k.channel, k.lease_prefix],
            )
            for q in request_ids
        ]
        if calls:
            for text in await self._batch(calls):
                self._apply_reply(text)

    async def reclaim(self, reservation: Reservation) -> bool:
        k, r = self.keys, reservation
        text = await self._eval(
            S.RECLAIM,
            [k.lease(r.pod, r.model), k.holders(r.pod, r.model), k.promises, k.reclaiming, k.seq],
            [
                r.victim,
                r.beneficiary,
                r.pod,
                r.model,
                field_of(r.pod, r.model),
                max(1, _ms(r.until - self.clock())),
                k.channel,
            ],
        )
        if not _text(text):
            return False
        self._apply_reply(text)  # calls this replica's listeners if the victim is its own
        return True

    def on_preempt(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._preempt.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._preempt.remove(listener)

        return unsubscribe

    def _preempted(self, member: str) -> None:
        if not member.startswith(f"{self.replica}/") or member in self._signalled:
            return
        self._signalled.add(member)
        for listener in list(self._preempt):
            listener(member)

    async def reassert(
        self,
        holders: Iterable[SlotHolder] = (),
        waiters: Iterable[Waiter] = (),
        counters: Mapping[CounterKey, float] | None = None,
    ) -> int:
        """Put back what this replica holds and waits for where the store lost it, push its
        waiting requests' expiry one TTL ahead, raise ``counters`` to at least the values
        given.  One round trip; returns the entries put back.

        Call it with the leases' renewal (after it: a holder document needs its lease)."""
        now = self.clock()
        held: list[Any] = []
        for h in holders:
            fb = None if h.first_byte is None else _ms(now - h.first_byte)
            doc = holder_doc(h, _ms(now - h.started), fb)
            held += [field_of(h.pod, h.model), h.member, _json(doc)]
        values: list[Any] = []
        for key, value in (counters or {}).items():
            if math.isfinite(value):
                values += [counter_field(key), repr(float(value))]
        waiting: list[Any] = []
        for w in waiters:
            waiting += [w.request_id, self._waiter_doc(w, now)]
        if not (held or values or waiting):
            return 0
        k = self.keys
        back, text = await self._eval(
            S.REASSERT,
            [k.holder_index, k.waiting, k.waiters, k.fair, k.seq],
            [
                int(self.lease_ttl * 1000),
                k.holder_prefix,
                k.channel,
                len(held) // 3,
                len(values) // 2,
                FAIR_TTL_MS,
                *held,
                *values,
                *waiting,
            ],
        )
        self._apply_reply(text)
        return _int(back)

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
        if ev.board:
            effects = self.mirror.board.apply(ev.seq, ev.board, self.mirror.local_time)
            for seat in effects.freed:
                self.signal.notify(seat)
            for member in effects.reclaimed:
                self._preempted(member)

    def _apply_reply(self, text: Any) -> None:
        """A board script's reply: its event (or '' when it changed nothing)."""
        if text:
            ev = parse_event(text)
            if ev is not None:
                self._on_event(ev)

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


def _charge_args(charge: Charge | None) -> list[Any]:
    """The acquire and release scripts' counter arguments: field, delta, floor, ttl."""
    if charge is None or not math.isfinite(charge.delta):
        return ["", 0, "", FAIR_TTL_MS]
    floor = repr(float(charge.floor)) if math.isfinite(charge.floor) else ""
    return [counter_field(charge.key), repr(float(charge.delta)), floor, FAIR_TTL_MS]


def _now_arg(now_ms: int | None) -> str:
    """Scripts use the server's clock unless a test pins it."""
    return "" if now_ms is None else str(int(now_ms))
