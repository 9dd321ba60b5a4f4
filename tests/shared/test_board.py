"""The scheduler's board across replicas: RedisState instances on a real redis-server stand
for balancer replicas; each must see every replica's holders, waiting requests, counters and
reclaims, and a reclaim must reach the victim's replica, whichever it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis.asyncio as aioredis
from bench.redis_server import RedisServer

from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.priority import Priority
from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.core.shared.board import (
    PROMISED,
    Board,
    Charge,
    CounterKey,
    Reservation,
    SlotHolder,
    Waiter,
)
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.core.shared.model import Lease, SlotFreed
from ollama_balancer.shared.fallback import FallbackState
from ollama_balancer.shared.store import RedisState
from tests.harness.eventually import eventually
from tests.harness.redis import StoreFactory, running_redis

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

POD, MODEL = "gpu-0", "registry.ollama.ai/library/llama3:latest"
HEAVY: CounterKey = (MODEL, Priority.BATCH, "heavy")
LIGHT: CounterKey = (MODEL, Priority.STANDARD, "light")


def holder(tenant: str = "heavy", cls: Priority = Priority.BATCH, **kw: Any) -> SlotHolder:
    """What the caller knows of a lease it asks for (the store fills in the rest)."""
    kw.setdefault("expected_seconds", 40.0)
    kw.setdefault("resumable", True)
    return SlotHolder("", "", "", "", "", cls=cls, tenant=tenant, **kw)


def waiter(request_id: str, replica: str, clock: float, **kw: Any) -> Waiter:
    kw.setdefault("cls", Priority.STANDARD)
    kw.setdefault("tenant", "light")
    return Waiter(request_id, MODEL, replica, arrival=clock, **kw)


async def reply(aw: object) -> Any:
    """A raw client's reply, typed the same with every redis-py release."""
    return await cast(Awaitable[Any], aw)


async def granted(aw: Awaitable[Any]) -> Lease:
    grant = await aw
    assert grant.lease is not None, grant
    lease: Lease = grant.lease
    return lease


def fallback_on(store: RedisState) -> FallbackState:
    """``store`` with local fallback, its loops quick: refresh 0.2 s, renewal 0.5 s."""
    local = LocalState(Ledger(), replica=store.replica, clock=time.monotonic)
    return FallbackState(
        store,
        local,
        refresh_interval=0.2,
        health_interval=0.2,
        reconnect_interval=0.2,
        renew_interval=0.5,
    )


@asynccontextmanager
async def replicas(
    make_store: StoreFactory, n: int, *, listen: bool = True, **kw: object
) -> AsyncIterator[list[RedisState]]:
    """``n`` connected replicas, each applying the events channel (when ``listen``)."""
    kw.setdefault("op_timeout", 5.0)  # a busy machine must not fail these tests
    stores = [make_store(**kw) for _ in range(n)]
    await asyncio.gather(*(s.connect() for s in stores))
    tasks = []
    if listen:
        for s in stores:
            subscribed = asyncio.Event()
            task = asyncio.create_task(s.listen(subscribed))
            tasks.append(task)
            # a listener that fails before it subscribed fails the test, never hangs it
            await eventually(lambda: subscribed.is_set() or task.done())  # noqa: B023
            if task.done():
                task.result()
    for s in stores:
        await s.refresh()
    try:
        yield stores
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def same_board(boards: list[Board]) -> bool:
    first = boards[0]
    return all(
        set(b.holders) == set(first.holders)
        and set(b.waiters) == set(first.waiters)
        and b.counters == first.counters
        and set(b.reservations) == set(first.reservations)
        and b.reclaiming == first.reclaiming
        for b in boards[1:]
    )


# ------------------------------------------------------------------ sharing


@pytest.mark.parametrize("listen", [True, False], ids=["through events", "through refreshes"])
async def test_three_replicas_see_each_others_holders_waiters_and_counters(
    make_store: StoreFactory, listen: bool
) -> None:
    async with replicas(make_store, 3, listen=listen) as (a, b, c):

        async def seen(cond: Callable[[Board], bool]) -> None:
            """Every replica's board satisfies ``cond`` (without events: after a refresh)."""

            async def refreshed() -> bool:
                for s in (a, b, c):
                    await s.refresh()
                return all(cond(s.board()) for s in (a, b, c))

            if listen:
                await eventually(lambda: all(cond(s.board()) for s in (a, b, c)))
            else:
                await eventually(refreshed, interval=0.01)

        heavy = await granted(
            a.acquire(
                POD,
                MODEL,
                slots=4,
                request_id="h1",
                holder=holder(weight=2.0, preemptions=1),
                charge=Charge(HEAVY, 20.0),
            )
        )
        await b.boards.post_waiter(waiter("l1", b.replica, b.clock(), expected_seconds=3.0))
        await c.boards.post_waiter(waiter("l2", c.replica, c.clock(), deadline=c.clock() + 30))
        await seen(lambda bd: heavy.member in bd.holders and {"l1", "l2"} <= set(bd.waiters))
        for s in (a, b, c):
            h = s.board().holders[heavy.member]
            assert (h.pod, h.model, h.replica, h.request_id) == (POD, MODEL, a.replica, "h1")
            assert (h.cls, h.tenant, h.weight, h.expected_seconds) == (
                Priority.BATCH,
                "heavy",
                2.0,
                40.0,
            )
            assert (h.preemptions, h.resumable, h.first_byte) == (1, True, None)
            assert abs(h.started - s.clock()) < 1.0  # server ms, in this replica's clock
            w = s.board().waiters["l2"]
            assert (w.replica, w.tenant, w.cls) == (c.replica, "light", Priority.STANDARD)
            assert w.deadline is not None and abs(w.deadline - s.clock() - 30) < 1.0
            assert s.board().waiters["l1"].expected_seconds == 3.0
            assert s.board().counters == {HEAVY: 20.0}  # per unit of weight: the caller's
        assert await a.first_byte(heavy) is None  # not a load: nothing learned
        await seen(lambda bd: bd.holders[heavy.member].first_byte is not None)

        # b's waiting request gets its slot: the board moves it from waiting to holding
        light = await granted(
            b.acquire(
                POD,
                MODEL,
                slots=4,
                request_id="l1",
                holder=holder("light", Priority.STANDARD),
                charge=Charge(LIGHT, 3.0),
            )
        )
        await seen(
            lambda bd: (
                light.member in bd.holders
                and "l1" not in bd.waiters
                and bd.counters == {HEAVY: 20.0, LIGHT: 3.0}
            )
        )
        await a.release(heavy, charge=Charge(HEAVY, -5.0))
        await b.release(light)
        await c.boards.drop_waiter("l2")
        await seen(
            lambda bd: (
                not bd.holders and not bd.waiters and bd.counters == {HEAVY: 15.0, LIGHT: 3.0}
            )
        )
        assert same_board([s.board() for s in (a, b, c)])


FLOORS = [
    pytest.param([Charge(HEAVY, 2.0), Charge(HEAVY, -0.5)], id="no floor"),
    pytest.param(
        [Charge(HEAVY, 2.0, floor=10.0), Charge(HEAVY, 1.0, floor=5.0)],
        id="raised to the floor, then a floor below it does nothing",
    ),
    pytest.param(
        [Charge(HEAVY, 0.1), Charge(HEAVY, 0.2), Charge(HEAVY, -0.3, floor=0.05)],
        id="doubles kept exactly",
    ),
]


@pytest.mark.parametrize("charges", FLOORS)
async def test_charges_match_the_local_book(
    make_store: StoreFactory, raw: aioredis.Redis, charges: list[Charge]
) -> None:
    """Charges on acquire and release give the values LocalState's book gives."""
    local = LocalState()
    async with replicas(make_store, 2) as (a, b):
        lease: Lease | None = None
        for i, charge in enumerate(charges):
            expected = local.book.charge(charge)
            if lease is None:
                lease = await granted(
                    a.acquire(POD, MODEL, slots=1, request_id=str(i), charge=charge)
                )
            else:
                await a.release(lease, charge=charge)
                lease = None
            assert a.board().counters[HEAVY] == expected
            await eventually(lambda: b.board().counters.get(HEAVY) == expected)  # noqa: B023
        stored = await reply(raw.hget("test:fair", f"{MODEL}|batch|heavy"))
        assert float(stored) == local.book.counter(HEAVY)


async def test_acquire_and_release_with_the_board_take_one_round_trip_each(
    make_store: StoreFactory,
) -> None:
    async with replicas(make_store, 1) as (a,):
        await a.boards.post_waiter(waiter("q", a.replica, a.clock()))
        trips = 0
        real = a.connection.io

        async def counting(aw: Awaitable[T]) -> T:
            nonlocal trips
            trips += 1
            return await real(aw)

        a.connection.io = counting  # type: ignore[method-assign]
        lease = await granted(
            a.acquire(POD, MODEL, slots=1, request_id="q", holder=holder(), charge=Charge(HEAVY, 1))
        )
        assert trips == 1
        await a.release(lease, charge=Charge(HEAVY, -0.5))
        assert trips == 2
        assert a.board() == Board(counters={HEAVY: 0.5})


@pytest.mark.parametrize("end", ["drop", "acquire"])
async def test_a_requests_wait_ends_after_it_began_however_the_calls_race(
    make_store: StoreFactory, raw: aioredis.Redis, end: str
) -> None:
    """The wait room posts and drops as tasks of their own: a post whose round trip is slow
    (a new connection) must not land after the drop or the acquire that ended the wait."""
    async with replicas(make_store, 1) as (a,):
        real = a.connection.io
        slow = asyncio.Event()

        async def slow_first(aw: Awaitable[T]) -> T:
            if not slow.is_set():
                slow.set()
                await asyncio.sleep(0.2)
            return await real(aw)

        a.connection.io = slow_first  # type: ignore[method-assign]
        post = asyncio.create_task(a.boards.post_waiter(waiter("q", a.replica, a.clock())))
        await slow.wait()  # the post is on its way, slowly
        if end == "drop":
            await a.boards.drop_waiter("q")
        else:
            await granted(a.acquire(POD, MODEL, slots=1, request_id="q", holder=holder()))
        await post
        assert await reply(raw.hlen("test:waiter")) == 0
        assert await reply(raw.zcard("test:waiting")) == 0
        assert "q" not in a.board().waiters


async def test_a_bind_that_lost_its_slot_waits_no_more_under_its_id(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    """The wait room queues a refused bind again under a new id: the refusal ends the old
    id's wait on every board (else it stayed until its entry expired)."""
    async with replicas(make_store, 2) as (a, b):
        await granted(b.acquire(POD, MODEL, slots=1, request_id="other", holder=holder()))
        await a.boards.post_waiter(waiter("q", a.replica, a.clock()))
        await eventually(lambda: "q" in b.board().waiters)
        refused = await a.acquire(POD, MODEL, slots=1, request_id="q", holder=holder())
        assert refused.lease is None
        assert "q" not in a.board().waiters
        await eventually(lambda: "q" not in b.board().waiters)
        assert await reply(raw.hlen("test:waiter")) == 0
    # The fallback's shadow too: else its renewal would re-assert the old id for ever.
    fallback = fallback_on(make_store())
    await fallback.start()
    try:
        await fallback.post_waiter(waiter("f", fallback.store.replica, fallback.local.clock()))
        assert "f" in fallback.local.board().waiters
        refused = await fallback.acquire(POD, MODEL, slots=1, request_id="f", holder=holder())
        assert refused.lease is None
        assert "f" not in fallback.local.board().waiters and "f" not in fallback.board().waiters
    finally:
        await fallback.close()


# ------------------------------------------------------------------ reclaim


async def test_a_reclaim_on_one_replica_reaches_the_victims_replica_once(
    make_store: StoreFactory,
) -> None:
    async with replicas(make_store, 3) as (a, b, c):
        heard: dict[str, list[str]] = {s.replica: [] for s in (a, b, c)}
        for s in (a, b, c):
            s.boards.on_preempt(heard[s.replica].append)
        victim = await granted(b.acquire(POD, MODEL, slots=2, request_id="v", holder=holder()))
        plain = await granted(b.acquire(POD, MODEL, slots=2, request_id="nh"))  # no holder
        await a.boards.post_waiter(waiter("w", a.replica, a.clock()))
        await eventually(lambda: victim.member in a.board().holders)

        promise = Reservation("w", POD, MODEL, victim.member, a.clock() + 10)
        assert await a.boards.reclaim(promise)
        # a sees its promise at once (its own reply); b hears of it and preempts
        assert a.board().reservations["w"].victim == victim.member
        assert victim.member in a.board().reclaiming
        await eventually(lambda: heard[b.replica] == [victim.member])
        await eventually(lambda: same_board([s.board() for s in (a, b, c)]))
        for s in (a, b, c):
            await s.refresh()  # a refresh showing the same reclaim calls no one again
        assert heard == {a.replica: [], b.replica: [victim.member], c.replica: []}
        # the planner leaves a lease being taken back out of the pool: its seat is the
        # beneficiary's from the promise on
        pool = a.board().pool(MODEL, 2, a.clock())
        assert [(h.lease, h.tenant) for h in pool.holders] == [(PROMISED + "w", "light")]
        assert pool.slots == 2 and not pool.waiting

        refused = [
            replace(promise, beneficiary="other"),  # the victim is being taken back already
            replace(promise, victim=plain.member),  # the beneficiary holds a promise
            replace(promise, beneficiary="x", victim=plain.member),  # no holder on the board
            replace(promise, beneficiary="y", victim=f"{b.replica}/gone/1"),  # no such lease
        ]
        for r in refused:
            assert not await c.boards.reclaim(r), r

        # Reclaiming one's own lease calls one's own listener at once, once.
        own = await granted(c.acquire(POD, "other", slots=1, request_id="o", holder=holder()))
        assert await c.boards.reclaim(Reservation("z", POD, "other", own.member, c.clock() + 10))
        assert heard[c.replica] == [own.member]
        await eventually(lambda: "z" in a.board().reservations and "z" in c.board().reservations)
        assert heard[c.replica] == [own.member]


@pytest.mark.parametrize("victim_gone", [False, True], ids=["victim holds", "victim released"])
async def test_the_promised_seat_is_the_beneficiarys(
    make_store: StoreFactory, victim_gone: bool
) -> None:
    """One slot: a victim on b, a beneficiary waiting on a, a third party on c."""
    async with replicas(make_store, 3) as (a, b, c):
        victim = await granted(b.acquire(POD, MODEL, slots=1, request_id="v", holder=holder()))
        await a.boards.post_waiter(waiter("w", a.replica, a.clock()))
        assert await a.boards.reclaim(Reservation("w", POD, MODEL, victim.member, a.clock() + 10))
        if victim_gone:
            await b.release(victim)
        third = await c.acquire(POD, MODEL, slots=1, request_id="t", holder=holder("t"))
        assert third.lease is None
        assert third.held == (0 if victim_gone else 1)
        mine = await granted(
            a.acquire(
                POD, MODEL, slots=1, request_id="w", holder=holder("light", Priority.STANDARD)
            )
        )
        # the promise became the beneficiary's lease
        await eventually(lambda: all(mine.member in s.board().holders for s in (a, b, c)))
        for s in (a, b, c):
            await eventually(lambda: not s.board().reservations and "w" not in s.board().waiters)  # noqa: B023
        if not victim_gone:
            assert b.occupancy().inflight(POD, MODEL) == 2  # until the victim's relay ends
            await b.release(victim)
        await eventually(lambda: not any(s.board().reclaiming for s in (a, b, c)))
        # no promise is left: the slot is the beneficiary's, then anyone's
        assert (await c.acquire(POD, MODEL, slots=1, request_id="t2")).lease is None
        await a.release(mine)
        await granted(c.acquire(POD, MODEL, slots=1, request_id="t3"))


async def test_dropping_the_beneficiary_withdraws_the_promise_and_frees_the_seat(
    make_store: StoreFactory,
) -> None:
    async with replicas(make_store, 3) as (a, b, c):
        victim = await granted(b.acquire(POD, MODEL, slots=1, request_id="v", holder=holder()))
        await a.boards.post_waiter(waiter("w", a.replica, a.clock()))
        assert await a.boards.reclaim(Reservation("w", POD, MODEL, victim.member, a.clock() + 10))
        await b.release(victim)
        assert (await c.acquire(POD, MODEL, slots=1, request_id="t")).lease is None
        freed = asyncio.create_task(c.wait_slot_freed(MODEL, timeout=5))
        await asyncio.sleep(0)  # the waiter is registered before the drop
        await a.boards.drop_waiter("w")  # the beneficiary left: its seat is anyone's again
        assert await freed == SlotFreed(POD, MODEL, 0, 0)
        await eventually(lambda: all(not s.board().reservations for s in (a, b, c)))
        await granted(c.acquire(POD, MODEL, slots=1, request_id="t2"))


# ------------------------------------------------------------------ a replica dies


async def test_a_dead_replicas_waiters_and_leases_expire_and_its_promises_go(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    dead = make_store(lease_ttl=0.4)
    alive = make_store(lease_ttl=30.0)
    await dead.connect()
    await alive.connect()
    victim = await granted(alive.acquire(POD, MODEL, slots=2, request_id="v", holder=holder()))
    held = await granted(dead.acquire(POD, MODEL, slots=2, request_id="d", holder=holder("d")))
    await dead.boards.post_waiter(waiter("dw", dead.replica, dead.clock()))
    promise = Reservation("dw", POD, MODEL, victim.member, dead.clock() + 30)
    assert await dead.boards.reclaim(promise)
    await alive.boards.post_waiter(waiter("aw", alive.replica, alive.clock()))
    await alive.refresh()
    board = alive.board()
    assert {victim.member, held.member} <= set(board.holders) and set(board.waiters) == {"dw", "aw"}
    assert set(board.reservations) == {"dw"}

    await dead.close()  # killed: it renews nothing from now on

    async def expired() -> bool:
        await alive.refresh()
        board = alive.board()
        return held.member not in board.holders and "dw" not in board.waiters

    await eventually(expired, "the dead replica's lease and place to expire", interval=0.05)
    board = alive.board()
    assert set(board.holders) == {victim.member}
    assert set(board.waiters) == {"aw"}  # the living replica's place is kept
    assert not board.reservations  # the dead beneficiary's promise is withdrawn
    assert await reply(raw.hlen("test:promises")) == 0
    assert await reply(raw.hkeys(f"test:holder:{POD}|{MODEL}")) == [victim.member]
    assert alive.occupancy().inflight(POD, MODEL) == 1


# ------------------------------------------------------------------ an empty store


async def test_an_emptied_store_is_rebuilt_from_what_each_replica_reasserts(
    make_store: StoreFactory, raw: aioredis.Redis
) -> None:
    """The store loses everything (flushall): the replicas' renewals put back their holders
    and waiting requests, and their refreshes the fair-share counters they last saw."""
    a = fallback_on(make_store())
    b = fallback_on(make_store())
    await a.start()
    await b.start()
    try:
        lease = await granted(
            a.acquire(POD, MODEL, slots=2, request_id="h", holder=holder(), charge=Charge(HEAVY, 8))
        )
        await a.first_byte(lease)
        await b.post_waiter(waiter("w", b.store.replica, b.local.clock(), deadline=1e9))

        def complete(s: FallbackState) -> bool:
            board = s.board()
            h = board.holders.get(lease.member)
            return (
                h is not None
                and h.first_byte is not None
                and "w" in board.waiters
                and board.counters.get(HEAVY) == 8.0
            )

        await eventually(lambda: complete(a) and complete(b))
        before = b.board()
        epoch = await reply(raw.get("test:epoch"))
        await raw.flushall()

        async def rebuilt() -> bool:
            return bool(
                await reply(raw.hexists(f"test:holder:{POD}|{MODEL}", lease.member))
                and await reply(raw.hexists("test:waiter", "w"))
                and await reply(raw.hget("test:fair", f"{MODEL}|batch|heavy")) == "8"
            )

        await eventually(rebuilt, "the store rebuilt by the replicas", interval=0.05)
        assert await reply(raw.get("test:epoch")) not in (None, epoch)
        await eventually(lambda: complete(a) and complete(b))
        after = b.board()
        h0, h1 = before.holders[lease.member], after.holders[lease.member]
        assert replace(h1, started=h0.started, first_byte=h0.first_byte) == h0
        assert abs(h1.started - h0.started) < 0.1 and h1.first_byte is not None
        assert after.waiters["w"].tenant == "light"
        assert await reply(raw.zcard(f"test:lease:{POD}|{MODEL}")) == 1  # the lease is back too
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ the store fails


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


async def test_without_the_store_the_local_board_serves_and_nothing_raises(
    own_redis: RedisServer,
) -> None:
    def make(replica: str) -> FallbackState:
        store = RedisState(
            parse_store_url(own_redis.url), replica=replica, keys=Keys("t"), op_timeout=0.2
        )
        local = LocalState(Ledger(), replica=replica, clock=time.monotonic)
        return FallbackState(
            store,
            local,
            renew_interval=0.3,
            refresh_interval=0.1,
            health_interval=0.1,
            reconnect_interval=0.1,
        )

    a, b = make("a"), make("b")
    await a.start()
    await b.start()
    try:
        shared = await granted(
            a.acquire(POD, MODEL, slots=2, request_id="s", holder=holder(), charge=Charge(HEAVY, 5))
        )
        await b.post_waiter(waiter("bw", "b", b.local.clock()))
        await eventually(lambda: "bw" in a.board().waiters and HEAVY in b.board().counters)

        own_redis.stop()
        await a.post_waiter(waiter("aw", "a", a.local.clock()))  # served locally: no raise
        await eventually(lambda: not a.up)
        board = a.board()
        assert set(board.holders) == {shared.member} and set(board.waiters) == {"aw"}
        assert board.counters == {HEAVY: 5.0}  # the fleet's clock as last seen goes on
        local = await granted(
            a.acquire(
                POD, MODEL, slots=2, request_id="aw", holder=holder(), charge=Charge(HEAVY, 3)
            )
        )
        assert not local.shared
        assert await a.reclaim(Reservation("x", POD, MODEL, local.member, 1e9))
        assert not await a.reclaim(Reservation("y", POD, MODEL, "b/none/1", 1e9))
        await a.first_byte(local)
        await a.drop_waiter("x")
        await a.release(shared, charge=Charge(HEAVY, -1))
        board = a.board()
        assert set(board.holders) == {local.member} and not board.waiters
        assert board.holders[local.member].first_byte is not None
        assert board.counters == {HEAVY: 7.0}
        assert a.status()["mode"] == "fallback"
        await a.post_waiter(waiter("later", "a", a.local.clock()))

        own_redis.start()  # empty, as after a restart
        await eventually(lambda: a.up and b.up)
        # a's holder (of the lease taken during the outage), its waiting request and its
        # counters are back, for every replica to see; b re-asserted the 5 it last saw, the
        # higher value wins
        await eventually(
            lambda: (
                local.member in b.board().holders
                and "later" in b.board().waiters
                and b.board().counters.get(HEAVY) == 7.0
            )
        )
        await a.release(local)
        await eventually(lambda: not b.board().holders)
    finally:
        await a.close()
        await b.close()
