"""Late binding as tables: (waiting, fleet, occupancy) -> who is bound where, who keeps waiting."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from ollama_balancer.core.dispatch import Binding, Dispatch, dispatch
from ollama_balancer.core.errors import for_outcome
from ollama_balancer.core.fleet import FleetSnapshot
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.occupancy import LoadRecord, Occupancy
from ollama_balancer.core.queueing import Waiting
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_wire.names import canonical
from tests.harness.routing_cases import NOW, Pod, at, snap

M = canonical("llama3")


def occ(
    inflight: dict[str, int] | None = None,
    loading: dict[str, float] | None = None,
    load_s: float = 20.0,
    service_s: float = 5.0,
    penalised: tuple[str, ...] = (),
) -> Occupancy:
    """Occupancy of model llama3: pod -> requests in flight, pod -> load start."""
    return Occupancy(
        held={(p, M): n for p, n in (inflight or {}).items()},
        loads={(p, M): LoadRecord(t, f"load-{p}") for p, t in (loading or {}).items()},
        penalties=dict.fromkeys(penalised, NOW + 10),
        load_times={M: load_s},
        service_times={M: service_s},
    )


def queue(n: int, pin: str | None = None, waited: float = 1.0) -> list[Waiting]:
    return [
        Waiting(f"w{i}", M, "t", display="llama3", pin=pin, enqueued=NOW - waited)
        for i in range(1, n + 1)
    ]


def run(
    fleet: FleetSnapshot,
    occupancy: Occupancy,
    waiting: list[Waiting],
    binding: Binding = Binding.LATE,
    hold: float = 0.0,
    scan_limit: int = 32,
) -> Dispatch:
    return dispatch(
        waiting,
        at(fleet, occupancy),
        random.Random(7),
        binding=binding,
        hold_unavailable=hold,
        scan_limit=scan_limit,
    )


def binds(d: Dispatch) -> list[tuple[str, str, str]]:
    return [(b.id, b.backend, b.reason) for b in d.binds]


TWO_WARM = snap(
    Pod("a", ["llama3"], ["llama3"], slots=2), Pod("b", ["llama3"], ["llama3"], slots=2)
)
TWO_WARM_ONE_COLD = snap(
    Pod("a", ["llama3"], ["llama3"], slots=2),
    Pod("b", ["llama3"], ["llama3"], slots=2),
    Pod("c", ["llama3"], slots=2, vram_gb=24),
)


@pytest.mark.parametrize(
    ("fleet", "occupancy", "waiting", "expected", "held"),
    [
        pytest.param(
            TWO_WARM,
            occ({"a": 2, "b": 1}),
            queue(1),
            [("w1", "b", "resident")],
            [],
            id="a free slot anywhere: bind",
        ),
        pytest.param(
            TWO_WARM,
            occ({"a": 2, "b": 1}),
            queue(3),
            [("w1", "b", "resident")],
            ["w2", "w3"],
            id="one free slot: only the head goes",
        ),
        pytest.param(
            TWO_WARM,
            occ({"a": 1, "b": 0}),
            queue(4),
            [("w1", "b", "resident"), ("w2", "*", "resident"), ("w3", "*", "resident")],
            ["w4"],
            id="three free slots: three go, in queue order",
        ),
        pytest.param(
            TWO_WARM_ONE_COLD,
            occ({"a": 2, "b": 2}, load_s=20, service_s=5),
            queue(3),
            [],
            ["w1", "w2", "w3"],
            id="no free slot, waiting cheaper than a load: everyone stays queued",
        ),
        pytest.param(
            TWO_WARM_ONE_COLD,
            occ({"a": 2, "b": 2}, load_s=20, service_s=30),
            queue(1),
            [("w1", "c", "cold-load")],
            [],
            id="waiting costs more than a load on a roomy pod: cold load",
        ),
        pytest.param(
            TWO_WARM_ONE_COLD,
            occ({"a": 2, "b": 2}, load_s=20, service_s=5),
            queue(20),
            [("w17", "c", "cold-load"), ("w18", "c", "loading")],
            [f"w{i}" for i in (*range(1, 17), 19, 20)],
            id="a long queue spills its tail to a cold load; a follower takes its other slot",
        ),
        pytest.param(
            TWO_WARM,
            occ({"a": 2, "b": 2}, load_s=20, service_s=30),
            queue(2),
            [],
            ["w1", "w2"],
            id="waiting is long but no pod has room: stay queued",
        ),
        pytest.param(
            snap(
                Pod("a", ["llama3"], slots=1, vram_gb=24), Pod("b", ["llama3"], slots=1, vram_gb=8)
            ),
            occ(),
            queue(3),
            [("w1", "a", "cold-load")],
            ["w2", "w3"],
            id="resident nowhere: one load, not one per waiting request",
        ),
        pytest.param(
            snap(Pod("a", ["llama3"], slots=2), Pod("b", ["llama3"], slots=2)),
            occ({"a": 1}, loading={"a": NOW - 5}),
            queue(2),
            [("w1", "a", "loading")],
            ["w2"],
            id="a loading pod's free slot takes the head",
        ),
        pytest.param(
            TWO_WARM,
            occ({"a": 2, "b": 0}, penalised=("b",)),
            queue(1),
            [],
            ["w1"],
            id="a penalised pod's free slot waits while a healthy pod will free",
        ),
        pytest.param(
            snap(Pod("a", ["llama3"], ["llama3"], slots=2)),
            occ({"a": 0}, penalised=("a",)),
            queue(1),
            [("w1", "a", "resident")],
            [],
            id="a penalised pod is used when it is the only one",
        ),
        pytest.param(
            TWO_WARM,
            occ({"a": 2, "b": 0}),
            queue(1, pin="a"),
            [],
            ["w1"],
            id="pinned: waits for its own pod's slot",
        ),
        pytest.param(
            TWO_WARM_ONE_COLD,
            occ({"a": 2, "b": 2}),
            queue(1, pin="c"),
            [("w1", "c", "named")],
            [],
            id="pinned to a pod without the model: the client asked for that load",
        ),
    ],
)
def test_late_binding(
    fleet: FleetSnapshot,
    occupancy: Occupancy,
    waiting: list[Waiting],
    expected: list[tuple[str, str, str]],
    held: list[str],
) -> None:
    d = run(fleet, occupancy, waiting)
    got = binds(d)
    assert len(got) == len(expected), got
    for (rid, pod, reason), want in zip(got, expected, strict=True):
        assert (rid, reason) == (want[0], want[2])
        assert pod == want[1] or want[1] == "*"
    assert sorted(d.held, key=lambda x: int(x[1:])) == held
    assert not d.rejects
    # Never more requests on a warm pod than it has slots.
    for state in fleet.backends:
        warm = [b for b in d.binds if b.backend == state.name and not b.cold]
        before = occupancy.inflight(state.name, M)
        assert not warm or before + len(warm) <= state.backend.slots, (state.name, warm)


def test_a_slot_frees_and_the_head_of_that_models_queue_goes() -> None:
    waiting = queue(3)
    busy = run(TWO_WARM, occ({"a": 2, "b": 2}), waiting)
    assert not busy.binds and list(busy.held) == ["w1", "w2", "w3"]
    freed = run(TWO_WARM, occ({"a": 1, "b": 2}), waiting)
    assert binds(freed) == [("w1", "a", "resident")]
    assert freed.binds[0].waited == pytest.approx(1.0)


def test_other_models_do_not_take_the_slot() -> None:
    other = canonical("mistral")
    fleet = snap(Pod("a", ["llama3", "mistral"], ["llama3", "mistral"], slots=1))
    waiting = [Waiting("m1", other, "t", display="mistral"), *queue(1)]
    d = run(fleet, Occupancy(held={("a", other): 1}), waiting)
    assert binds(d) == [("w1", "a", "resident")]
    assert d.held == ("m1",)


def test_expected_wait_grows_with_the_position() -> None:
    d = run(TWO_WARM, occ({"a": 2, "b": 2}, service_s=4), queue(4))
    # 4 warm slots of 4 s: one frees every second on average.
    assert [d.expected_wait[f"w{i}"] for i in range(1, 5)] == [1.0, 2.0, 3.0, 4.0]


def test_failover_order_starts_with_the_bound_pod() -> None:
    d = run(TWO_WARM, occ({"a": 2, "b": 0}), queue(1))
    assert [c.backend for c in d.binds[0].ranked] == ["b", "a"]
    assert not d.binds[0].cold


@pytest.mark.parametrize(
    ("fleet", "hold", "waited", "rejected", "held"),
    [
        pytest.param(snap(Pod("a", ["mistral"])), 30.0, 1.0, 404, False, id="unknown model"),
        pytest.param(
            snap(Pod("a", ["llama3"], down=True)), 0.0, 1.0, 503, False, id="its pods are down"
        ),
        pytest.param(
            snap(Pod("a", ["llama3"], down=True)),
            30.0,
            1.0,
            None,
            True,
            id="scale-from-zero hold: wait for a pod",
        ),
        pytest.param(
            snap(Pod("a", ["llama3"], down=True)),
            30.0,
            31.0,
            503,
            False,
            id="the hold is over",
        ),
    ],
)
def test_route_errors(
    fleet: FleetSnapshot, hold: float, waited: float, rejected: int | None, held: bool
) -> None:
    d = run(fleet, occ(), queue(1, waited=waited), hold=hold)
    assert [for_outcome(r.outcome).status for r in d.rejects] == ([rejected] if rejected else [])
    assert (d.held == ("w1",)) is held
    assert not d.binds


def test_early_binding_is_todays_behaviour() -> None:
    """Every request bound at once to routing's first choice, as if they arrived in order."""
    d = run(TWO_WARM, occ({"a": 2, "b": 2}), queue(4), binding=Binding.EARLY)
    assert len(d.binds) == 4 and not d.held
    assert {b.backend for b in d.binds} == {"a", "b"}
    led = Ledger(20.0, 5.0)
    for pod in ("a", "b"):
        for i in range(2):
            led.begin(pod, M, cold=False, now=NOW, request_id=f"{pod}{i}")
    rng = random.Random(7)
    for b in d.binds:
        choice = route(RouteRequest(M, "llama3"), at(TWO_WARM, led), Policy(), rng).ranked[0]
        assert b.backend == choice.backend
        led.begin(choice.backend, M, cold=False, now=NOW, request_id=b.id)


def test_dispatch_routes_on_the_ledgers_value() -> None:
    """The ledger's figures reach routing as one value, and early dispatch ranks like it."""
    fleet = TWO_WARM_ONE_COLD
    led = Ledger(default_load_seconds=20.0, default_service_seconds=5.0)
    led.learn_service(M, 30.0)
    for i in range(2):
        led.begin("a", M, cold=False, now=NOW, request_id=f"a{i}")
        led.begin("b", M, cold=False, now=NOW, request_id=f"b{i}")
    led.begin("c", M, cold=True, now=NOW - 3, request_id="loader")
    led.penalise("b", NOW + 5)
    o = led.occupancy()
    assert o.held == {("a", M): 2, ("b", M): 2, ("c", M): 1}
    assert o.loads == {("c", M): LoadRecord(NOW - 3, "loader")}
    assert o.service_seconds(M) == 30.0 and o.load_seconds(M) == 20.0
    assert o.penalties == {"b": NOW + 5}
    assert led.occupancy() is o  # no write since: the same value
    direct = route(RouteRequest(M, "llama3"), at(fleet, led), Policy(), random.Random(7))
    via = run(fleet, o, queue(1), binding=Binding.EARLY)
    assert [c.backend for c in via.binds[0].ranked] == [c.backend for c in direct.ranked]


def test_a_fresh_load_of_another_model_takes_vram_in_dispatch_as_in_routing() -> None:
    """Pod a finished loading llama3 after its last poll (so /api/ps does not show it yet):
    a waiting mistral request is loaded on b, which has more room left, exactly as routing
    places it on arrival."""
    fleet = snap(
        Pod("a", ["llama3", "mistral"], vram_gb=16),
        Pod("b", ["mistral"], vram_gb=14),
    )
    led = Ledger()
    led.begin("a", M, cold=True, now=NOW - 5, request_id="r1")
    led.first_byte("a", M, now=NOW - 0.5, request_id="r1")  # after a's last poll (NOW - 1)
    led.end("a", M, request_id="r1")
    mistral = canonical("mistral")
    waiting = [Waiting("m1", mistral, "t", display="mistral", enqueued=NOW - 1)]
    late = run(fleet, led.occupancy(), waiting)
    early = route(RouteRequest(mistral, "mistral"), at(fleet, led), Policy(), random.Random(7))
    assert binds(late) == [("m1", "b", "cold-load")]
    assert early.ranked[0].backend == "b"


@pytest.mark.parametrize(
    ("waiting", "service_s", "scan_limit", "spill"),
    [
        pytest.param(20, 5.0, 4, "w17", id="spill at depth 16, scan limit 4"),
        pytest.param(40, 5.0, 8, "w17", id="deep queue, scan limit 8"),
        pytest.param(17, 5.0, 1, "w17", id="the last request is the first to spill"),
        pytest.param(16, 5.0, 2, None, id="no request deep enough to spill"),
        pytest.param(40, 2.5, 3, "w33", id="shorter requests spill deeper"),
    ],
)
def test_past_the_scan_limit_the_first_spill_is_found_by_bisection(
    waiting: int, service_s: float, scan_limit: int, spill: str | None
) -> None:
    """Routing one by one and bisecting the tail pick the same request for the cold load."""
    o = occ({"a": 2, "b": 2}, load_s=20, service_s=service_s)
    full = run(TWO_WARM_ONE_COLD, o, queue(waiting), scan_limit=10_000)
    probed = run(TWO_WARM_ONE_COLD, o, queue(waiting), scan_limit=scan_limit)
    first_cold = [(b.id, b.backend) for b in full.binds if b.cold][:1]
    assert first_cold == ([(spill, "c")] if spill else [])
    assert [(b.id, b.backend) for b in probed.binds if b.cold] == first_cold
    assert all(b.cold for b in probed.binds)  # the new pod's other slot goes on the next call
    assert len(probed.binds) + len(probed.held) == waiting


@pytest.mark.parametrize(
    ("waiting", "ahead", "scan_limit", "spill"),
    [
        pytest.param(8, lambda i: 0, 10_000, None, id="alone: 8 queued spill nothing"),
        pytest.param(8, lambda i: 10, 10_000, "w7", id="10 elsewhere ahead of all: w7 at 16"),
        pytest.param(12, lambda i: i - 1, 10_000, "w9", id="interleaved: w9 at 8 + 8"),
        pytest.param(12, lambda i: i - 1, 2, "w9", id="interleaved, bisected"),
        pytest.param(8, lambda i: 10, 2, "w7", id="10 elsewhere, bisected"),
    ],
)
def test_other_replicas_waiters_count_ahead(
    waiting: int, ahead: Callable[[int], int], scan_limit: int, spill: str | None
) -> None:
    """With several balancer replicas, the requests the others hold (the shared board's) wait
    ahead too: a spill weighs the whole fleet's queue (spill at place 16, as above)."""
    o = occ({"a": 2, "b": 2}, load_s=20, service_s=5.0)
    d = dispatch(
        queue(waiting),
        at(TWO_WARM_ONE_COLD, o),
        random.Random(7),
        scan_limit=scan_limit,
        ahead={f"w{i}": ahead(i) for i in range(1, waiting + 1)},
    )
    assert [(b.id, b.backend) for b in d.binds if b.cold][:1] == ([(spill, "c")] if spill else [])


def test_the_expected_wait_counts_other_replicas_waiters_ahead() -> None:
    o = occ({"a": 2, "b": 2}, service_s=4)
    d = dispatch(queue(2), at(TWO_WARM, o), random.Random(7), ahead={"w1": 4, "w2": 5})
    # 4 warm slots of 4 s: one frees every second; w1 has 4 ahead, w2 w1 and 5 more.
    assert (d.expected_wait["w1"], d.expected_wait["w2"]) == (5.0, 7.0)


def test_a_copy_of_another_num_ctx_is_no_free_slot() -> None:
    """A request with its own num_ctx is not bound to a free slot of a copy loaded with another
    one (Ollama would drain and reload it): it goes where routing sends it."""
    fleet = snap(
        Pod("a", ["llama3"], ["llama3"], slots=2),
        Pod("b", ["llama3"], slots=2, vram_gb=24),
    )
    w = [Waiting("w1", M, "t", display="llama3", enqueued=NOW - 1.0, num_ctx=2048)]
    d = dispatch(w, at(fleet, occ({"a": 1})), random.Random(7))
    assert [(b.backend, b.reason) for b in d.binds] == [("b", "cold-load")]


def test_a_cold_bind_carries_the_warm_pods_it_was_decided_on() -> None:
    """The lease of a cold load is taken under the model's load lock; a copy another replica
    started meanwhile shows as one warm pod more than the bind was decided on."""
    o = occ({"a": 2, "b": 2}, load_s=20, service_s=5.0)
    d = run(TWO_WARM_ONE_COLD, o, queue(17))
    cold = [b for b in d.binds if b.cold]
    assert [(b.backend, b.warm) for b in cold] == [("c", 2)]
    assert all(b.warm == 0 for b in d.binds if not b.cold)
