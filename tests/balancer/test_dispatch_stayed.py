"""Late binding decides a request's spill once, on arrival, as early binding does (tables).

The case replayed is bench routing's bursty cold start: a burst of one model queues while
its first copy loads on pod ``a``; when the load finishes, routing's spill threshold falls
from two load times (a load under way) to one, while the burst still counts ahead.  A request
that stayed on arrival keeps waiting for a warm slot; a newcomer decides as early binding would.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from ollama_balancer.core.dispatch import Binding, Dispatch, dispatch
from ollama_balancer.core.fleet import FleetSnapshot
from ollama_balancer.core.occupancy import LoadRecord, Occupancy
from ollama_balancer.core.queueing import QueueSettings, Waiting
from ollama_balancer.core.rankers import Reason
from ollama_balancer.core.routing import Policy
from ollama_balancer.polling import FleetTracker
from ollama_balancer.waitroom import WaitRoom
from ollama_wire.names import canonical
from tests.harness.eventually import eventually
from tests.harness.routing_cases import NOW, Pod, at, snap

M = canonical("llama3")
LOAD_S = 1.5
SERVICE_S = 0.3


def fleet(resident_on_a: bool = True) -> FleetSnapshot:
    """Pod ``a`` holds llama3 (resident or not), ``b`` and ``c`` have room to load it."""
    return snap(
        Pod("a", ["llama3"], ["llama3"] if resident_on_a else [], slots=4, vram_gb=24),
        Pod("b", ["llama3"], slots=4, vram_gb=24),
        Pod("c", ["llama3"], slots=4, vram_gb=24),
    )


def occ(inflight: dict[str, int], loading: dict[str, float] | None = None) -> Occupancy:
    return Occupancy(
        held={(p, M): n for p, n in inflight.items()},
        loads={(p, M): LoadRecord(t, f"load-{p}") for p, t in (loading or {}).items()},
        load_times={M: LOAD_S},
        service_times={M: SERVICE_S},
    )


def queue(first: int, last: int) -> list[Waiting]:
    return [
        Waiting(f"w{i}", M, "t", display="llama3", enqueued=NOW - 1.0)
        for i in range(first, last + 1)
    ]


def run(
    snapshot: FleetSnapshot,
    occupancy: Occupancy,
    waiting: list[Waiting],
    stayed: set[str] | None = None,
    binding: Binding = Binding.LATE,
    scan_limit: int = 32,
) -> Dispatch:
    return dispatch(
        waiting,
        at(snapshot, occupancy),
        random.Random(7),
        binding=binding,
        scan_limit=scan_limit,
        stayed=frozenset(stayed or ()),
    )


def cold(d: Dispatch) -> list[str]:
    return [b.id for b in d.binds if b.cold]


BURST = queue(1, 24)
STAYED = {w.id for w in BURST}


def test_a_burst_arriving_during_the_first_load_stays() -> None:
    """A load under way counts in the threshold (two load times): nobody spills."""
    d = run(fleet(resident_on_a=False), occ({"a": 4}, {"a": NOW - 1.0}), BURST)
    assert not d.binds
    assert list(d.held) == [w.id for w in BURST]


@pytest.mark.parametrize(
    ("stayed", "spilled"),
    [
        pytest.param(
            set(), ["w21"], id="routed afresh: place 21 spills once the load is done (the bug)"
        ),
        pytest.param(STAYED, [], id="stayed on arrival: the burst keeps waiting for pod a"),
        pytest.param(
            STAYED - {"w24"}, ["w24"], id="only a request deciding for the first time spills"
        ),
    ],
)
def test_when_the_load_finishes_those_that_stayed_keep_waiting(
    stayed: set[str], spilled: list[str]
) -> None:
    # Pod a is resident now, its 4 slots busy; the threshold is one load time (1.5 s) and
    # place 21 expects ((20 + 4 - 4) // 4 + 1) x 0.3 s = 1.8 s.
    d = run(fleet(), occ({"a": 4}), BURST, stayed)
    assert cold(d) == spilled
    # Behind a spill, the followers take the new copy's free slots; nobody else moves.
    assert {b.backend for b in d.binds} <= {b.backend for b in d.binds if b.cold}
    assert len(d.binds) + len(d.held) == len(BURST)


def test_a_newcomer_behind_the_burst_decides_as_early_binding_would() -> None:
    """An arrival with the burst queued ahead spills exactly where early binding sends it
    (early binding: the burst is in flight on pod a, queued inside Ollama)."""
    newcomer = queue(25, 25)
    late = run(fleet(), occ({"a": 4}), BURST + newcomer, STAYED)
    early = run(fleet(), occ({"a": 4 + len(BURST)}), newcomer, binding=Binding.EARLY)
    assert cold(late) == ["w25"]
    assert early.binds[0].reason is Reason.COLD_LOAD
    assert {late.binds[0].backend, early.binds[0].backend} <= {"b", "c"}  # a tie: either
    assert set(late.held) == STAYED


def test_a_request_that_stayed_takes_a_free_slot_of_the_copy_a_newcomer_started() -> None:
    """The newcomer's load on b is warm for everyone: its free slots go to those that stayed
    (the deepest ones, for whom b serves no later than pod a)."""
    d = run(fleet(), occ({"a": 4, "b": 1}, {"b": NOW}), BURST, STAYED)
    assert [(b.backend, b.reason) for b in d.binds] == [("b", Reason.LOADING)] * 3
    assert not cold(d)


def test_with_no_warm_pod_left_a_request_that_stayed_starts_the_load() -> None:
    """Its model left pod a (evicted, or the pod went away): one load, the others follow it."""
    d = run(fleet(resident_on_a=False), occ({}), queue(1, 3), {"w1", "w2", "w3"})
    assert cold(d) == ["w1"]
    assert [b.reason for b in d.binds] == [Reason.COLD_LOAD, Reason.LOADING, Reason.LOADING]


TWO_WARM_ONE_COLD = snap(
    Pod("a", ["llama3"], ["llama3"], slots=2),
    Pod("b", ["llama3"], ["llama3"], slots=2),
    Pod("c", ["llama3"], slots=2, vram_gb=24),
)


@pytest.mark.parametrize(
    ("stayed", "spill"),
    [
        pytest.param(0, "w17", id="nobody stayed: place 17 spills"),
        pytest.param(16, "w17", id="those ahead stayed: place 17 still spills"),
        pytest.param(20, "w21", id="the first to decide now spills"),
        pytest.param(40, None, id="everyone stayed: nobody spills"),
    ],
)
def test_past_the_scan_limit_only_a_newcomer_spills(stayed: int, spill: str | None) -> None:
    """Routing one by one and bisecting the tail pick the same newcomer for the cold load."""
    o = Occupancy(held={("a", M): 2, ("b", M): 2}, load_times={M: 20.0}, service_times={M: 5.0})
    waiting = queue(1, 40)
    ids = {f"w{i}" for i in range(1, stayed + 1)}
    full = run(TWO_WARM_ONE_COLD, o, waiting, ids, scan_limit=10_000)
    probed = run(TWO_WARM_ONE_COLD, o, waiting, ids, scan_limit=3)
    assert cold(full)[:1] == ([spill] if spill else [])
    assert cold(probed) == cold(full)[:1]
    assert len(probed.binds) + len(probed.held) == len(waiting)


async def test_the_wait_room_remembers_who_stayed_across_pumps() -> None:
    """The wiring: the burst held by the pumps during the load is still waiting after the
    pump that sees the load done; the next arrival spills (the wait room's clock is fixed)."""
    view = FleetTracker()
    view.snapshot = fleet(resident_on_a=False)
    figures = [occ({"a": 4}, {"a": NOW - 1.0})]
    room = WaitRoom(
        QueueSettings(enabled=True, max_per_model=64, max_wait=100.0),
        view,
        lambda: figures[0],
        Policy(),
        rng=random.Random(7),
        clock=lambda: NOW,
    )
    burst = [asyncio.ensure_future(room.wait(w)) for w in BURST]
    try:
        await eventually(lambda: room.waiting() == len(BURST))
        view.snapshot = fleet()
        figures[0] = occ({"a": 4})
        room.pump()
        assert room.waiting() == len(BURST)
        assert not any(t.done() for t in burst)
        bound = await asyncio.wait_for(room.wait(queue(25, 25)[0]), 5)
        assert (bound.id, bound.reason) == ("w25", Reason.COLD_LOAD)
    finally:
        for t in burst:
            t.cancel()
        await asyncio.gather(*burst, return_exceptions=True)
