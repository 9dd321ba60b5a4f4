"""The pure parts of shared state, as tables: addresses, settings, resync plans, quota
verdicts, the mirror's ordering rules, the affinity map, and routing on a fleet-wide view."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace

import pytest

from ollama_balancer.core.auth import ApiKey
from ollama_balancer.core.fleet import FleetSnapshot
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.occupancy import LoadRecord, Occupancy
from ollama_balancer.core.shared.address import StoreAddress, parse_store_url
from ollama_balancer.core.shared.gate import load_decision
from ollama_balancer.core.shared.keys import Keys
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.core.shared.mirror import Event, Mirror, Refresh, parse_event
from ollama_balancer.core.shared.model import Lease, QuotaTicket, SlotFreed
from ollama_balancer.core.shared.quota import CONCURRENCY, REQUESTS, TOKENS, refusal
from ollama_balancer.core.shared.resync import Entry, plan_resync
from ollama_balancer.core.shared.signals import AffinityMap
from ollama_balancer.settings import SettingsError, add_arguments, load_settings
from tests.harness import routing_cases


# ------------------------------------------------------------------ addresses, settings
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://valkey:6379/0", StoreAddress("valkey"), id="plain"),
        pytest.param("redis://valkey", StoreAddress("valkey"), id="default port and db"),
        pytest.param(
            "rediss://:s3cr%40t@redis.example:6380/2",
            StoreAddress("redis.example", 6380, 2, tls=True, password="s3cr@t"),
            id="TLS, password (url-encoded), db",
        ),
        pytest.param(
            "redis://fleet:pw@[::1]:7000",
            StoreAddress("::1", 7000, username="fleet", password="pw"),
            id="ACL user, IPv6",
        ),
        pytest.param(
            "redis+sentinel://sentinel-0:26379,sentinel-1,[::1]:5000/fleet",
            StoreAddress(
                "sentinel-0",
                26379,
                sentinels=(("sentinel-0", 26379), ("sentinel-1", 26379), ("::1", 5000)),
                service="fleet",
            ),
            id="sentinel: three sentinels, default port, IPv6",
        ),
        pytest.param(
            "rediss+sentinel://app:p%40ss@s.example:26380/my-primary/3",
            StoreAddress(
                "s.example",
                26380,
                3,
                tls=True,
                username="app",
                password="p@ss",
                sentinels=(("s.example", 26380),),
                service="my-primary",
            ),
            id="sentinel: TLS, data nodes' user and password, db",
        ),
        pytest.param(
            "REDIS+SENTINEL://:pw@s/fleet/",
            StoreAddress("s", 26379, password="pw", sentinels=(("s", 26379),), service="fleet"),
            id="sentinel: scheme in capitals, trailing slash",
        ),
    ],
)
def test_parse_store_url(url: str, expected: StoreAddress) -> None:
    got = parse_store_url(url)
    assert got == expected
    assert got.password == expected.password


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("http://redis:6379", "scheme must be redis://", id="scheme"),
        pytest.param("redis://:6379", "names no host", id="no host"),
        pytest.param("redis://r:port", "not a redis", id="bad port"),
        pytest.param("redis://r/db1", "database must be a number", id="bad db"),
        pytest.param("redis://r?ssl_cert_reqs=none", "query options", id="query"),
        pytest.param("redis+sentinel://s1,s2", "names its service", id="sentinel: no service"),
        pytest.param("redis+sentinel:///fleet", "at least one sentinel", id="sentinel: none"),
        pytest.param("redis+sentinel://s:x/fleet", "sentinel 's:x'", id="sentinel: bad port"),
        pytest.param("redis+sentinel://s/fleet/one", "must be a number", id="sentinel: bad db"),
        pytest.param("redis+sentinel://s/fleet/0/x", "only a database", id="sentinel: extra"),
        pytest.param("redis+sentinel://s/fleet?x=1", "query options", id="sentinel: query"),
        pytest.param("sentinel://s/fleet", "redis\\+sentinel://", id="sentinel: kombu scheme"),
    ],
)
def test_parse_store_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_store_url(url)


def test_redacted_url_hides_the_password() -> None:
    a = parse_store_url("rediss://user:hunter2@r:1/3")
    assert a.redacted() == "rediss://user:***@r:1/3"
    assert "hunter2" not in repr(a)
    s = parse_store_url("rediss+sentinel://:hunter2@a,[::1]:7/fleet")
    assert s.redacted() == "rediss+sentinel://:***@a:26379,[::1]:7/fleet/0"
    assert "hunter2" not in repr(s)
    assert parse_store_url(s.redacted().replace("***", "x")).sentinels == s.sentinels


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"OLLAMA_FLEET_SHARED_STATE": "http://x"}, "shared_state: scheme", id="url"),
        pytest.param(
            {
                "OLLAMA_FLEET_SHARED_STATE": "redis://:pw@x",
                "OLLAMA_FLEET_SHARED_STATE_PASSWORD_FILE": "/p",
            },
            "carries a password already",
            id="password twice",
        ),
        pytest.param(
            {"OLLAMA_FLEET_SHARED_STATE": "redis://x", "OLLAMA_FLEET_SHARED_STATE_CA_FILE": "/ca"},
            "only with a rediss",
            id="CA without TLS",
        ),
        pytest.param(
            {
                "OLLAMA_FLEET_SHARED_STATE": "redis+sentinel://s/fleet",
                "OLLAMA_FLEET_SHARED_STATE_CA_FILE": "/ca",
            },
            "only with a rediss:// or rediss\\+sentinel://",
            id="CA without TLS, sentinel",
        ),
        pytest.param(
            {
                "OLLAMA_FLEET_SHARED_STATE": "redis://x",
                "OLLAMA_FLEET_SHARED_STATE_SENTINEL_PASSWORD_FILE": "/p",
            },
            "only with a redis\\+sentinel:// URL",
            id="sentinel password without sentinel",
        ),
        pytest.param({"OLLAMA_FLEET_LEASE_TTL": "15"}, "at most half of lease_ttl", id="renew"),
        pytest.param({"OLLAMA_FLEET_SHARED_STATE_TIMEOUT": "0"}, "must be > 0", id="timeout"),
    ],
)
def test_settings_refuse(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_settings_from_yaml_env_and_flags() -> None:
    s = load_settings(
        environ={"OLLAMA_FLEET_SHARED_STATE_PASSWORD_FILE": "/run/secrets/redis/password"},
        yaml_text="shared_state: rediss://valkey:6380/0\nlease_ttl: 60\nlease_renew_interval: 20\n",
    )
    assert s.shared.url == "rediss://valkey:6380/0"
    assert (s.shared.lease_ttl, s.shared.lease_renew_interval, s.shared.timeout) == (60, 20, 0.25)
    assert load_settings().shared.url == ""  # per-replica by default
    s = load_settings(
        environ={
            "OLLAMA_FLEET_SHARED_STATE": "rediss+sentinel://s0,s1/fleet",
            "OLLAMA_FLEET_SHARED_STATE_CA_FILE": "/ca.pem",
            "OLLAMA_FLEET_SHARED_STATE_PASSWORD_FILE": "/run/secrets/redis/password",
        },
        args=_flags("--shared-state-sentinel-password-file", "/run/secrets/sentinel/password"),
    )
    assert s.shared.sentinel_password_file == "/run/secrets/sentinel/password"
    assert s.shared.ca_file == "/ca.pem"


# ------------------------------------------------------------------ resync plans
K = Keys("p")


def lease(member: str, pod: str = "a", shared: bool = True) -> Lease:
    return Lease(pod, "m", member, 2, "rid", shared=shared)


def ticket(member: str) -> QuotaTicket:
    return QuotaTicket("team", member, 0, shared=True)


def entry(member: str, pod: str = "a") -> Entry:
    return Entry(K.lease(pod, "m"), member, f"{pod}|m")


@pytest.mark.parametrize(
    ("held", "tickets", "given_back", "register", "remove"),
    [
        pytest.param({}, {}, [], [], [], id="nothing held"),
        pytest.param(
            {"x": lease("x"), "y": lease("y", "b", shared=False)},
            {},
            [],
            [entry("x"), entry("y", "b")],
            [],
            id="shared and local leases are all (re-)registered",
        ),
        pytest.param(
            {},
            {"t": ticket("t")},
            [],
            [Entry(K.quota_inflight("team"), "t")],
            [],
            id="quota tickets too",
        ),
        pytest.param({}, {}, [entry("z")], [], [entry("z")], id="given back: removed"),
        pytest.param(
            {"x": lease("x")}, {}, [entry("x")], [entry("x")], [], id="still held is never removed"
        ),
    ],
)
def test_plan_resync(
    held: dict[str, Lease],
    tickets: dict[str, QuotaTicket],
    given_back: list[Entry],
    register: list[Entry],
    remove: list[Entry],
) -> None:
    plan = plan_resync(K, held, tickets, given_back)
    assert list(plan.register) == sorted(register)
    assert list(plan.remove) == sorted(remove)


# ------------------------------------------------------------------ quota verdicts
KEY = ApiKey("k", "0" * 64, max_concurrent=4, requests_per_minute=30, tokens_per_minute=1000)


@pytest.mark.parametrize(
    ("code", "wait", "expected"),
    [
        pytest.param(CONCURRENCY, 1.0, ("too many concurrent requests (limit 4)", 1), id="conc"),
        pytest.param(REQUESTS, 1.999, ("request rate limit exceeded (30/min)", 2), id="requests"),
        pytest.param(TOKENS, 0.001, ("token rate limit exceeded (1000/min)", 1), id="min 1 s"),
        pytest.param(TOKENS, 7.0, ("token rate limit exceeded (1000/min)", 7), id="whole"),
    ],
)
def test_refusal(code: int, wait: float, expected: tuple[str, int]) -> None:
    assert refusal(code, KEY, wait) == expected


# ------------------------------------------------------------------ the mirror
def ev(kind: str, seq: int, held: int = 0, **kw: object) -> Event:
    return Event(kind, seq, 1_000_000, "a", "m", held, 2, **kw)  # type: ignore[arg-type]


def refresh(seq: int, held: dict[tuple[str, str], int], **kw: object) -> Refresh:
    base: dict[str, object] = {
        "now_ms": 1_000_000,
        "seq": seq,
        "reclaimed": 0,
        "held": held,
        "loads": {},
        "loaded": {},
        "penalties": {},
        "load_times": {},
        "service_times": {},
    }
    base.update(kw)
    return Refresh(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("steps", "held", "freed"),
    [
        pytest.param([ev("acq", 1, 1), ev("acq", 2, 2)], 2, 0, id="in order"),
        pytest.param([ev("acq", 2, 2), ev("acq", 1, 1)], 2, 0, id="late event ignored"),
        pytest.param([ev("acq", 1, 1), ev("rel", 2, 0)], 0, 1, id="release frees"),
        pytest.param(
            [ev("acq", 1, 1), ev("rel", 2, 0), ev("rel", 2, 0)], 0, 1, id="own reply + event: once"
        ),
        pytest.param(
            [refresh(5, {("a", "m"): 2}), ev("rel", 4, 1)], 2, 0, id="event older than a refresh"
        ),
        pytest.param(
            [ev("acq", 6, 3), refresh(5, {("a", "m"): 2})], 3, 0, id="refresh older than an event"
        ),
        pytest.param(
            [ev("acq", 1, 2), refresh(5, {})], 0, 1, id="refresh shows a reclaim: signalled"
        ),
    ],
)
def test_mirror_applies_the_newest(steps: list[object], held: int, freed: int) -> None:
    mirror = Mirror(clock=lambda: 100.0)
    signals: list[SlotFreed] = []
    for step in steps:
        if isinstance(step, Event):
            got = mirror.apply_event(step)
            if got is not None:
                signals.append(got)
        else:
            assert isinstance(step, Refresh)
            signals += mirror.apply_refresh(step)
    assert mirror.occupancy().inflight("a", "m") == held
    assert len(signals) == freed


def test_mirror_loads_penalties_and_times_in_local_clock() -> None:
    mirror = Mirror(clock=lambda: 100.0)
    mirror.apply_refresh(
        refresh(
            3,
            {("a", "m"): 1},
            now_ms=50_000,  # server clock 50 s when local is 100 s: offset -50
            loads={("a", "m"): ("r1", 45_000)},
            penalties={"b": 60_000},
            load_times={"m": 12.5},
        )
    )
    occ = mirror.occupancy()
    assert occ.loading("a", "m") == LoadRecord(95.0, "r1")
    assert occ.penalised("b", 109.0) and not occ.penalised("b", 110.5)
    assert occ.load_seconds("m") == 12.5 and occ.service_seconds("m") == 5.0
    assert occ.loading_on("a") == ("m",) and occ.loading_on("b") == ()
    assert occ.backend_inflight("a") == 1 and occ.total_inflight() == 1
    assert occ.fleet_wide and mirror.occupancy() is occ  # unchanged: the same value
    mirror.apply_event(Event("loaded", 4, 55_000, "a", "m"))
    assert mirror.occupancy().loading("a", "m") is None
    assert mirror.occupancy().loaded_at("a", "m") == 105.0


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"s": 1}', b'{"k": "acq", "s": "x"}', "\xff"],
    ids=["text", "list", "no kind", "bad seq", "bad utf-8"],
)
def test_parse_event_never_raises(data: bytes | str) -> None:
    assert parse_event(data) is None


def test_parse_event_fields() -> None:
    got = parse_event(b'{"k":"rel","s":7,"t":1.7e12,"p":"a","m":"m","h":1,"n":2,"r":"x"}')
    assert got == Event("rel", 7, 1_700_000_000_000, "a", "m", 1, 2, member="x")


# ------------------------------------------------------------------ affinity map
def test_affinity_map_is_bounded_and_expires() -> None:
    now = [0.0]
    m = AffinityMap(lambda: now[0], size=2, ttl=10)
    m.put("a", "p1")
    m.put("b", "p2")
    assert m.get("a") == "p1"  # a is now the most recent
    m.put("c", "p3")
    assert (m.get("a"), m.get("b"), m.get("c")) == ("p1", None, "p3")
    now[0] = 11
    assert m.get("a") is None and len(m) == 1


# ------------------------------------------------------------------ local state
async def test_local_state_keeps_the_ledger_semantics() -> None:
    ledger = Ledger()
    local = LocalState(ledger, clock=lambda: 5.0)
    first = await local.acquire("a", "m", slots=1, request_id="1", cold=True)
    assert first.lease is not None and first.lease.loads and first.held == 1
    assert (await local.acquire("a", "m", slots=1, request_id="2")).lease is None
    queued = await local.acquire("a", "m", slots=1, request_id="3", overflow=True, cold=True)
    assert queued.lease is not None and not queued.lease.loads  # joins the load
    assert local.occupancy() is ledger.occupancy() and ledger.inflight("a", "m") == 2
    assert await local.first_byte(first.lease) == 0.0
    waiter = asyncio.create_task(local.wait_slot_freed("m", timeout=1))
    await asyncio.sleep(0)
    await local.release(queued.lease)  # 1 of 1 slot still held: nothing freed
    await asyncio.sleep(0)
    assert not waiter.done()
    await local.release(first.lease, affinity="conv")
    assert (await waiter) == SlotFreed("a", "m", 0, 1)
    assert local.affinity("conv") == "a" and ledger.total_inflight() == 0


async def test_load_decision_one_at_a_time_locally() -> None:
    local = LocalState()
    order: list[str] = []

    async def decide(who: str) -> bool:
        async with load_decision(local, "m", who, wait=1.0) as got:
            order.append(f"{who} in")
            await asyncio.sleep(0.05)
            order.append(f"{who} out")
            return got

    results = await asyncio.gather(decide("x"), decide("y"))
    assert list(results) == [True, True]
    assert order == ["x in", "x out", "y in", "y out"]


async def test_load_decision_gives_up_without_failing() -> None:
    local = LocalState()
    assert await local.lock_load("m", "other", 60)
    async with load_decision(local, "m", "me", wait=0.05) as got:
        assert got is False
    assert not await local.lock_load("m", "me", 1)  # the other's lock was left alone


# ------------------------------------------------------------------ routing on the view
def occupancy_of(led: Ledger) -> Occupancy:
    """What a replica's mirror holds after a refresh that read exactly ``led``'s figures."""
    own = led.occupancy()
    ms = 1000  # the store's clock in ms; the local clock reads the same seconds
    mirror = Mirror(
        lambda: routing_cases.NOW, led.default_load_seconds, led.default_service_seconds
    )
    mirror.apply_refresh(
        refresh(
            1,
            dict(own.held),
            now_ms=int(routing_cases.NOW * ms),
            loads={k: (r.request_id, int(r.started * ms)) for k, r in own.loads.items()},
            loaded={k: int(t * ms) for k, t in own.loaded.items()},
            penalties={p: int(u * ms) for p, u in own.penalties.items()},
            load_times=dict(own.load_times),
            service_times=dict(own.service_times),
        )
    )
    return mirror.occupancy()


@pytest.mark.parametrize(("fleet", "led", "expected"), routing_cases.CASES)
def test_routing_on_a_fleet_wide_view_decides_as_on_a_ledger(
    fleet: FleetSnapshot, led: Ledger, expected: list[tuple[str, str]]
) -> None:
    """Every routing table case, its counts read through a mirror: the same value, the same
    decision."""
    view = occupancy_of(led)
    assert view.fleet_wide and replace(view, fleet_wide=False) == led.occupancy()
    assert routing_cases.decide(fleet, view) == routing_cases.decide(fleet, led) == expected


def test_routing_sees_other_replicas_requests() -> None:
    """Pod a's slot is held by another replica: this replica, which sent a nothing, routes
    to b (with only its own ledger it would have picked a)."""
    fleet = routing_cases.snap(
        routing_cases.Pod("a", ["llama3"], ["llama3"]),
        routing_cases.Pod("b", ["llama3"], ["llama3"]),
    )
    model = routing_cases.M
    view = Occupancy(held={("a", model): 1}, fleet_wide=True)
    assert routing_cases.decide(fleet, view)[0] == ("b", "resident")
