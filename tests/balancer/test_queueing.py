"""The queue discipline as tables: class order, aging, fair share on tokens, expiry, shedding."""

from __future__ import annotations

from collections import Counter

import pytest

from ollama_balancer.core.queueing import (
    SHARED_TENANT,
    BadPriority,
    Priority,
    QueueSettings,
    Waiting,
    WaitQueue,
    demand,
    expected_wait,
    request_priority,
    retry_after,
    tenant_of,
)

C, S, B = Priority.CRITICAL, Priority.STANDARD, Priority.BATCH
M = "llama3"

# An arrival: (id, tenant, class, tokens, at)
Arrival = tuple[str, str, Priority, int, float]


def fill(arrivals: list[Arrival], settings: QueueSettings | None = None) -> WaitQueue:
    q = WaitQueue(settings or QueueSettings(batch_aging=30))
    for rid, tenant, prio, tokens, at in arrivals:
        assert q.offer(Waiting(rid, M, tenant, prio, tokens), at).admitted
    return q


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"),
    [
        pytest.param(
            [("b1", "t", B, 10, 0), ("s1", "t", S, 10, 0), ("c1", "t", C, 10, 0)],
            1,
            ["c1", "s1", "b1"],
            id="critical, then standard, then batch",
        ),
        pytest.param(
            [("s1", "t", S, 10, 0), ("s2", "t", S, 10, 1), ("s3", "t", S, 10, 2)],
            3,
            ["s1", "s2", "s3"],
            id="one tenant in one class: arrival order",
        ),
        pytest.param(
            [("b1", "x", B, 100, 0), ("s1", "y", S, 100, 10)],
            29,
            ["s1", "b1"],
            id="batch younger than the aging time waits behind standard",
        ),
        pytest.param(
            [("b1", "x", B, 100, 0), ("s1", "y", S, 100, 10)],
            30,
            ["b1", "s1"],
            id="aged batch competes as standard; the older arrival wins the tie",
        ),
        pytest.param(
            [
                ("hs1", "heavy", S, 100, 0),
                ("hs2", "heavy", S, 100, 0),
                ("hs3", "heavy", S, 100, 0),
                ("hb1", "heavy", B, 100, 0),
                ("l1", "light", S, 100, 31),
            ],
            31,
            ["hs1", "l1", "hs2", "hs3", "hb1"],
            id="aged batch joins the end of its own tenant's standard sequence",
        ),
        pytest.param(
            [("b1", "x", B, 100, 0), ("c1", "y", C, 100, 10)],
            1000,
            ["c1", "b1"],
            id="aged batch never passes critical",
        ),
        pytest.param(
            [
                ("h1", "heavy", S, 100, 0),
                ("h2", "heavy", S, 100, 0),
                ("h3", "heavy", S, 100, 0),
                ("l1", "light", S, 100, 1),
            ],
            2,
            ["h1", "l1", "h2", "h3"],
            id="a newcomer is served after the first of a backlog, not after all of it",
        ),
        pytest.param(
            [("long", "a", S, 1000, 0), *[(f"s{i}", "b", S, 100, 0) for i in range(1, 5)]],
            1,
            ["s1", "s2", "s3", "s4", "long"],
            id="fair share is on tokens: short requests pass one long one",
        ),
    ],
)
def test_order(arrivals: list[Arrival], now: float, expected: list[str]) -> None:
    q = fill(arrivals)
    assert [w.id for w in q.ordered(now, M)] == expected
    assert [w.id for w in q.ordered(now)] == expected


def _served(q: WaitQueue, now: float, n: int) -> list[Waiting]:
    out = []
    for _ in range(n):
        head = q.ordered(now, M)[0]
        out.append(q.take(head.id))
    return out


@pytest.mark.parametrize(
    ("heavy_weight", "light_weight", "light_share"),
    [
        pytest.param(1.0, 1.0, 10, id="equal weights: half each, not 10:1"),
        pytest.param(4.0, 1.0, 4, id="weight 4 vs 1: a fifth for the light tenant"),
        pytest.param(1.0, 4.0, 16, id="weight 1 vs 4: four fifths for the light tenant"),
    ],
)
def test_weighted_share_of_a_backlog(
    heavy_weight: float, light_weight: float, light_share: int
) -> None:
    """Heavy queues 100 requests, light 20 (same size): who gets the first 20 slots."""
    q = WaitQueue()
    for i in range(100):
        q.offer(Waiting(f"h{i}", M, "heavy", S, 100, heavy_weight), 0)
    for i in range(20):
        q.offer(Waiting(f"l{i}", M, "light", S, 100, light_weight), 0)
    served = Counter(w.tenant for w in _served(q, 1, 20))
    assert served["light"] == light_share


@pytest.mark.parametrize(
    ("heavy_rate", "light_rate", "light_weight", "light_served_min", "light_served_max"),
    [
        pytest.param(10, 1, 1.0, 50, 50, id="10x flood: the light tenant gets all it asks"),
        pytest.param(10, 3, 1.0, 48, 52, id="both over their share: half the slots each"),
        pytest.param(10, 3, 3.0, 73, 77, id="weight 3: three quarters of the slots"),
    ],
)
def test_flood_over_time(
    heavy_rate: int,
    light_rate: int,
    light_weight: float,
    light_served_min: int,
    light_served_max: int,
) -> None:
    """Every tick both tenants send, two slots free; 50 ticks: the light tenant's count."""
    q = WaitQueue(QueueSettings(max_per_model=10_000, max_wait=1e9))
    served: Counter[str] = Counter()
    n = 0
    for tick in range(50):
        for _ in range(heavy_rate):
            n += 1
            q.offer(Waiting(f"r{n}", M, "heavy", S, 100), tick)
        for _ in range(light_rate):
            n += 1
            q.offer(Waiting(f"r{n}", M, "light", S, 100, light_weight), tick)
        served.update(w.tenant for w in _served(q, tick, 2))
    assert light_served_min <= served["light"] <= light_served_max, served


@pytest.mark.parametrize(
    ("queued", "arriving", "shed", "admitted"),
    [
        pytest.param(
            [("s1", S), ("b1", B), ("s2", S)], ("s3", S), "b1", True, id="batch is shed first"
        ),
        pytest.param(
            [("b1", B), ("b2", B), ("s1", S)], ("c1", C), "b2", True, id="the newest batch"
        ),
        pytest.param(
            [("b1", B), ("b2", B), ("s1", S)], ("b3", B), "b3", False, id="an arriving batch"
        ),
        pytest.param(
            [("s1", S), ("s2", S), ("s3", S)],
            ("c1", C),
            "s3",
            True,
            id="no batch: the newest of the lowest class",
        ),
        pytest.param(
            [("s1", S), ("s2", S), ("c1", C)],
            ("s3", S),
            "s3",
            False,
            id="the arriving request is the newest of the lowest class",
        ),
        pytest.param(
            [("c1", C), ("c2", C), ("c3", C)], ("s1", S), "s1", False, id="full of critical"
        ),
    ],
)
def test_shedding(
    queued: list[tuple[str, Priority]], arriving: tuple[str, Priority], shed: str, admitted: bool
) -> None:
    q = WaitQueue(QueueSettings(max_per_model=3))
    for i, (rid, prio) in enumerate(queued):
        assert q.offer(Waiting(rid, M, "t", prio, 10), float(i)).admitted
    offer = q.offer(Waiting(arriving[0], M, "t", arriving[1], 10), 10.0)
    assert offer.admitted is admitted
    assert [w.id for w in offer.shed] == [shed]
    assert q.length(M) == 3
    assert q.get(shed) is None
    assert (q.get(arriving[0]) is not None) is admitted


def test_queues_are_per_model() -> None:
    q = WaitQueue(QueueSettings(max_per_model=1))
    assert q.offer(Waiting("a", "m1", "t"), 0).admitted
    assert q.offer(Waiting("b", "m2", "t"), 0).admitted
    assert not q.offer(Waiting("c", "m1", "t"), 0).admitted


def test_across_models_class_first_then_arrival() -> None:
    q = WaitQueue()
    q.offer(Waiting("a-batch", "a", "t", B), 0)
    q.offer(Waiting("a-std", "a", "t", S), 1)
    q.offer(Waiting("b-crit", "b", "t", C), 2)
    q.offer(Waiting("b-std", "b", "t", S), 0.5)
    assert [w.id for w in q.ordered(3)] == ["b-crit", "b-std", "a-std", "a-batch"]


@pytest.mark.parametrize(
    ("now", "expired", "left"),
    [
        pytest.param(9.9, [], ["early", "late"], id="before any deadline"),
        pytest.param(10, ["early"], ["late"], id="the first deadline passes"),
        pytest.param(99, ["early", "late"], [], id="both past"),
    ],
)
def test_expiry(now: float, expired: list[str], left: list[str]) -> None:
    q = WaitQueue(QueueSettings(max_wait=10))
    q.offer(Waiting("early", M, "t"), 0)
    q.offer(Waiting("late", M, "t"), 5)
    assert q.next_change(0) == 10
    assert [w.id for w in q.expire(now)] == expired
    assert [w.id for w in q.ordered(now)] == left


def test_next_change_includes_aging() -> None:
    q = WaitQueue(QueueSettings(max_wait=100, batch_aging=30))
    q.offer(Waiting("b", M, "t", B), 0)
    assert q.next_change(0) == 30
    assert q.next_change(31) == 100
    assert WaitQueue().next_change(0) is None


def test_cancel_returns_the_tenant_its_virtual_time() -> None:
    q = WaitQueue()
    q.offer(Waiting("h1", M, "heavy", S, 100), 0)
    q.offer(Waiting("h2", M, "heavy", S, 100), 0)
    assert q.cancel("h2") is not None
    assert q.cancel("h2") is None
    q.offer(Waiting("h3", M, "heavy", S, 100), 1)
    tags = {t.request.id: (t.start, t.finish) for t in q.tagged(M, 1)}
    assert tags["h3"] == (100.0, 200.0)


def test_take_advances_the_virtual_clock() -> None:
    q = WaitQueue()
    q.offer(Waiting("a1", M, "a", S, 100), 0)
    q.offer(Waiting("a2", M, "a", S, 100), 0)
    q.take("a1")
    q.offer(Waiting("b1", M, "b", S, 50), 1)
    # b starts at V = 100 (a1's finish), not at 0: no credit for having been idle.
    assert {t.request.id: t.start for t in q.tagged(M, 1)} == {"a2": 100.0, "b1": 100.0}
    assert [w.id for w in q.ordered(1)] == ["b1", "a2"]


def test_positions_depth_and_demand() -> None:
    q = fill([("b1", "t", B, 10, 0), ("s1", "t", S, 10, 0), ("c1", "t", C, 10, 0)])
    assert [q.position(x, 1) for x in ("c1", "s1", "b1", "zz")] == [0, 1, 2, None]
    assert q.depth(1) == {(M, C): 1, (M, S): 1, (M, B): 1}
    assert q.depth(31) == {(M, C): 1, (M, S): 2}  # the batch one has aged
    assert len(q) == 3 and q.models() == [M]
    assert demand({M: 8, "x": 1}, {M: 3}) == {M: 11, "x": 1}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(Waiting("x", M, "t", tokens=0), id="zero tokens"),
        pytest.param(Waiting("x", M, "t", weight=0), id="zero weight"),
    ],
)
def test_bad_offers(bad: Waiting) -> None:
    with pytest.raises(ValueError):
        WaitQueue().offer(bad, 0)


def test_duplicate_id_and_unknown_take() -> None:
    q = WaitQueue()
    q.offer(Waiting("x", M, "t"), 0)
    with pytest.raises(ValueError, match="already waiting"):
        q.offer(Waiting("x", M, "t"), 0)
    with pytest.raises(KeyError):
        q.take("nope")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"max_per_model": 0}, "max_per_model", id="no room"),
        pytest.param({"max_wait": 0}, "max_wait", id="no wait"),
        pytest.param({"batch_aging": -1}, "batch_aging", id="negative aging"),
    ],
)
def test_bad_settings(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueueSettings(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("position", "service", "slots", "wait", "header"),
    [
        pytest.param(0, 5.0, 8, 0.625, 1, id="next in line: one slot-free interval"),
        pytest.param(15, 4.0, 8, 8.0, 8, id="16th in line, 8 slots of 4 s"),
        pytest.param(100, 30.0, 2, 1515.0, 1515, id="deep queue of long requests"),
        pytest.param(10_000, 60.0, 1, 600_060.0, 3600, id="capped at an hour"),
        pytest.param(3, 2.0, 0, 8.0, 8, id="no warm slot counts as one"),
    ],
)
def test_expected_wait_and_retry_after(
    position: int, service: float, slots: int, wait: float, header: int
) -> None:
    assert expected_wait(position, service, slots) == pytest.approx(wait)
    assert retry_after(position, service, slots) == header


@pytest.mark.parametrize(
    ("key", "header", "expected"),
    [
        pytest.param(None, None, S, id="default standard"),
        pytest.param(C, None, C, id="the key's class"),
        pytest.param(C, "batch", B, id="a request may lower its class"),
        pytest.param(S, "critical", S, id="but never raise it"),
        pytest.param(B, "standard", B, id="batch key stays batch"),
        pytest.param(None, " BATCH ", B, id="case and spaces"),
        pytest.param(S, "", S, id="empty header"),
    ],
)
def test_request_priority(key: Priority | None, header: str | None, expected: Priority) -> None:
    assert request_priority(key, header) is expected


def test_bad_priority_header_names_the_classes() -> None:
    with pytest.raises(BadPriority, match="critical, standard, batch"):
        request_priority(None, "urgent")


@pytest.mark.parametrize(
    ("key", "header", "tenant"),
    [
        pytest.param("team-a", "alice", "team-a", id="the key's name wins"),
        pytest.param(None, " alice ", "alice", id="else the tenant header"),
        pytest.param(None, None, SHARED_TENANT, id="else one shared tenant"),
        pytest.param(None, "  ", SHARED_TENANT, id="blank header"),
    ],
)
def test_tenant_of(key: str | None, header: str | None, tenant: str) -> None:
    assert tenant_of(key, header) == tenant
