"""Slot claims on their own: early binding's choice of slot, late binding through the wait
room, the failover lease, and a release that survives its handler's cancellation."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, cast

import pytest

from ollama_balancer.context import QuotaHold
from ollama_balancer.core.fleet import PollResult
from ollama_balancer.core.queueing import QueuePolicy, QueueSettings, Waiting
from ollama_balancer.core.rankers import Choice, Reason
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.core.routing import RouteRequest
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.core.shared.model import Lease, QuotaTicket
from ollama_balancer.core.shared.protocol import SharedState
from ollama_balancer.polling import FleetTracker
from ollama_balancer.proxying.claims import Claim, SlotClaims
from ollama_balancer.proxying.router import Router
from ollama_balancer.settings import BalancerSettings
from ollama_balancer.waitroom import WaitRoom
from ollama_wire.backend import Backend
from ollama_wire.models import parse_resident
from ollama_wire.names import canonical
from tests.harness.eventually import eventually

M = "llama3.2:3b"
K = canonical(M)  # how leases and the wait queue name it
RESIDENT = Reason.RESIDENT


def fleet(*names: str) -> FleetTracker:
    """Pods with one slot each and the model resident on all of them."""
    view = FleetTracker()
    view.set_backends([Backend(n, f"http://127.0.0.1:{9000 + i}") for i, n in enumerate(names)])
    for n in names:
        resident = parse_resident([{"name": M, "model": M, "size": 1}])
        view.apply(PollResult(n, time.monotonic(), resident=resident), fail_threshold=3)
    return view


def no_route(req: RouteRequest) -> tuple[Choice, ...]:
    raise AssertionError("early binding routed again for a warm choice")


def held(shared: SharedState, pod: str) -> int:
    return shared.occupancy().inflight(pod, K)


async def occupy(shared: SharedState, pod: str) -> Lease:
    grant = await shared.acquire(pod, K, slots=1, request_id=f"other-{pod}")
    assert grant.lease is not None
    return grant.lease


def record(rid: str = "r1") -> RequestRecord:
    return RequestRecord(rid, "POST", "/api/chat", model=M)


@pytest.mark.parametrize(
    ("busy", "ranked", "leased", "first"),
    [
        pytest.param((), ("a", "b"), "a", "a", id="the first warm pod with a free slot"),
        pytest.param(("a",), ("a", "b"), "b", "b", id="a full pod is passed over"),
        pytest.param(("a", "b"), ("a", "b"), "a", "a", id="all full: queues at the first"),
    ],
)
async def test_early_binding_takes_the_first_warm_slot(
    busy: tuple[str, ...], ranked: tuple[str, ...], leased: str, first: str
) -> None:
    shared = LocalState()
    for pod in busy:
        await occupy(shared, pod)
    claims = SlotClaims(shared, fleet("a", "b"), no_route)
    claim = Claim(K)
    order = await claims.early(
        RouteRequest(K, M), tuple(Choice(p, RESIDENT) for p in ranked), "r1", claim
    )
    assert claim.lease is not None and claim.lease.pod == leased
    assert order[0].backend == first and {c.backend for c in order} == set(ranked)
    assert held(shared, leased) == 1 + (leased in busy)


async def test_early_binding_does_not_spill_past_the_warm_pods() -> None:
    shared = LocalState()
    await occupy(shared, "a")
    claims = SlotClaims(shared, fleet("a", "b"), no_route)
    claim = Claim(K)
    ranked = (Choice("a", RESIDENT), Choice("b", Reason.COLD_LOAD))
    assert await claims.early(RouteRequest(K, M), ranked, "r1", claim) == ranked
    assert claim.lease is not None and claim.lease.pod == "a"  # queued where it is warm
    assert held(shared, "b") == 0


async def test_a_failover_gives_the_claimed_slot_back_and_takes_one_where_it_goes() -> None:
    shared = LocalState()
    view = fleet("a", "b")
    claims = SlotClaims(shared, view, no_route)
    claim = Claim(K)
    await claims.early(RouteRequest(K, M), (Choice("a", RESIDENT),), "r1", claim)
    b = view.snapshot.get("b")
    assert b is not None
    await claims.lease_for(claim, b.backend, Choice("b", RESIDENT), record())
    assert (held(shared, "a"), held(shared, "b")) == (0, 1)
    assert claim.lease is not None and claim.lease.pod == "b"
    await claims.lease_for(claim, b.backend, Choice("b", RESIDENT), record())
    assert held(shared, "b") == 1  # already there: kept, not taken twice


async def test_a_route_that_takes_no_slot_holds_none() -> None:
    shared = LocalState()
    view = fleet("a")
    claims = SlotClaims(shared, view, no_route)
    claim = Claim(K, takes_slot=False)
    a = view.snapshot.get("a")
    assert a is not None
    await claims.lease_for(claim, a.backend, Choice("a", RESIDENT), record())
    assert claim.lease is None and held(shared, "a") == 0


@pytest.mark.parametrize("answered", [True, False])
async def test_release_settles_quota_and_affinity_only_for_an_answer(answered: bool) -> None:
    shared = LocalState()
    claims = SlotClaims(shared, fleet("a"), no_route)
    hold = QuotaHold(QuotaTicket("key", "r1", 0))
    claim = Claim(K, quota=hold, affinity="conversation")
    await claims.early(RouteRequest(K, M), (Choice("a", RESIDENT),), "r1", claim)
    await claims.release(claim, record(), answered=answered)
    assert claim.lease is None and held(shared, "a") == 0
    assert hold.settled is answered
    assert shared.affinity("conversation") == ("a" if answered else None)
    await claims.release(claim, record(), answered=answered)  # once only
    assert held(shared, "a") == 0


class SlowRelease:
    """Local state whose release waits for the test: a store's round trip, held open."""

    def __init__(self) -> None:
        self.local = LocalState()
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.released = asyncio.Event()

    async def release(self, lease: Lease, **kw: Any) -> None:
        self.entered.set()
        await self.go.wait()
        await self.local.release(lease, **kw)
        self.released.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


async def test_a_release_survives_the_cancellation_of_its_handler() -> None:
    """A client closing right after the last byte cancels the handler in its release: the
    slot must still be given back, not left to expire with its lease's TTL."""
    store = SlowRelease()
    shared = cast(SharedState, store)
    claims = SlotClaims(shared, fleet("a"), no_route)
    claim = Claim(K)
    await claims.early(RouteRequest(K, M), (Choice("a", RESIDENT),), "r1", claim)
    handler = asyncio.create_task(claims.release(claim, record(), answered=True))
    async with asyncio.timeout(5):
        await store.entered.wait()
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        assert held(shared, "a") == 1  # still in the store's round trip
        store.go.set()
        await store.released.wait()
    assert held(shared, "a") == 0 and claim.lease is None


async def test_late_binding_waits_for_a_freed_slot() -> None:
    shared = LocalState()
    view = fleet("a")
    settings = BalancerSettings()
    room = WaitRoom(
        QueueSettings(enabled=True, max_per_model=8, max_wait=10.0),
        view,
        shared.occupancy,
        settings.routing,
        rng=random.Random(0),
    )
    route = Router(
        view, shared.occupancy, settings.routing, rng=random.Random(0), clock=time.monotonic
    )
    claims = SlotClaims(shared, view, route, room)
    busy = Claim(K)
    await claims.early(RouteRequest(K, M), (Choice("a", RESIDENT),), "busy", busy)
    claim, rec = Claim(K), record("r2")
    waiting = asyncio.create_task(claims.late(Waiting("r2", K, "tenant"), rec, claim, pinned=False))
    await eventually(lambda: room.waiting() == 1)
    assert not waiting.done() and claim.lease is None
    await claims.release(busy, record("busy"))  # the slot frees: the wait room binds r2
    ranked = await asyncio.wait_for(waiting, 5)
    assert ranked[0].backend == "a"
    assert claim.lease is not None and claim.lease.pod == "a" and held(shared, "a") == 1
    assert rec.queue_wait is not None and rec.queue_wait >= 0


def reclaiming_room(shared: LocalState, view: FleetTracker, now: list[float]) -> WaitRoom:
    """A wait room of ``queue_policy=reclaim`` on ``shared``, its clock ``now[0]``."""
    return WaitRoom(
        QueueSettings(enabled=True, max_per_model=8, max_wait=60.0, policy=QueuePolicy.RECLAIM),
        view,
        shared.occupancy,
        BalancerSettings().routing,
        rng=random.Random(0),
        clock=lambda: now[0],
        shared=shared,
    )


async def test_a_waiting_request_is_on_the_board_at_its_arrival() -> None:
    """Every replica plans with the board's entries of the others' requests and with its own
    queue's: an entry must carry the arrival its queue gave the request (not the clock's
    zero, which made every replica put the others' requests first and bind none)."""
    now = [1000.0]
    shared = LocalState(clock=lambda: now[0])
    room = reclaiming_room(shared, fleet("a"), now)
    await occupy(shared, "a")
    waiting = asyncio.create_task(room.wait(Waiting("r2", K, "tenant")))
    try:
        await eventually(lambda: "r2" in shared.board().waiters)
        assert shared.board().waiters["r2"].arrival == 1000.0
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


class _Racing(LocalState):
    """Local state where another replica takes the slot just before the first acquire."""

    def __init__(self, now: list[float]) -> None:
        super().__init__(clock=lambda: now[0])
        self.now, self.raced = now, False

    async def acquire(self, pod: str, model: str, **kw: Any) -> Any:
        if not self.raced:
            self.raced = True
            self.now[0] += 5.0  # the lease is asked for a little later
            await super().acquire(pod, model, slots=1, request_id="the-other-replicas")
        return await super().acquire(pod, model, **kw)


async def test_a_request_that_loses_the_race_for_its_slot_keeps_its_place() -> None:
    """Bound to a slot another replica took first, a request queues again with the arrival
    it first had, not as a newcomer behind everyone who came since."""
    now = [1000.0]
    shared = _Racing(now)
    view = fleet("a")
    settings = BalancerSettings()
    room = reclaiming_room(shared, view, now)
    route = Router(
        view, shared.occupancy, settings.routing, rng=random.Random(0), clock=lambda: now[0]
    )
    claims = SlotClaims(shared, view, route, room, clock=lambda: now[0])
    task = asyncio.create_task(
        claims.late(Waiting("r2", K, "tenant"), record("r2"), Claim(K), pinned=False)
    )
    try:
        await eventually(lambda: room.queue.get("r2+") is not None)
        again = room.queue.get("r2+")
        assert again is not None and again.arrived == 1000.0 and again.enqueued == 1005.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
