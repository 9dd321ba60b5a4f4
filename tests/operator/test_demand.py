"""Demand from the balancer (tables for the pure part) and the feed against real balancers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from modelpool_operator.demand import DemandWindow, endpoint_urls, parse_demand, sum_fleet
from modelpool_operator.demandfeed import DemandFeed
from ollama_balancer.app import create_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from ollama_wire.names import canonical

L1 = canonical("llama3.2:1b")
G2 = canonical("gemma2:2b")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"demand": {}}, {}, id="idle"),
        pytest.param(
            {"demand": {"llama3.2:1b": 3, "gemma2:2b": 0}}, {L1: 3.0, G2: 0.0}, id="by key"
        ),
        pytest.param(
            {"demand": {"llama3.2:1b": 2, "registry.ollama.ai/library/llama3.2:1b": 1}},
            {L1: 3.0},
            id="two spellings of one model add up",
        ),
        pytest.param(
            {"demand": {"llama3.2:1b": -1, "bad name!": 4, "gemma2:2b": True}},
            {},
            id="nonsense skipped",
        ),
    ],
)
def test_parse_demand(doc: dict[str, Any], expected: dict[str, float]) -> None:
    assert parse_demand(doc) == expected


@pytest.mark.parametrize("doc", [None, [], {"backends": []}, {"demand": [1]}])
def test_parse_demand_refuses_a_document_without_demand(doc: Any) -> None:
    with pytest.raises(ValueError, match="no demand map"):
        parse_demand(doc)


def test_sum_fleet_adds_every_replica() -> None:
    assert sum_fleet([{L1: 2.0}, {L1: 1.0, G2: 4.0}, {}]) == {L1: 3.0, G2: 4.0}


def _endpoints(*subsets: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Endpoints", "subsets": list(subsets)}


OPS_HTTP = [{"name": "http", "port": 11434}, {"name": "ops", "port": 9090}]


@pytest.mark.parametrize(
    ("endpoints", "port", "urls"),
    [
        pytest.param(_endpoints(), "", [], id="no subsets"),
        pytest.param(
            _endpoints(
                {
                    "addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
                    "notReadyAddresses": [{"ip": "10.0.0.9"}],
                    "ports": OPS_HTTP,
                }
            ),
            "",
            ["http://10.0.0.1:9090", "http://10.0.0.2:9090"],
            id="ops by default; ready addresses only",
        ),
        pytest.param(
            _endpoints({"addresses": [{"ip": "10.0.0.1"}], "ports": OPS_HTTP}),
            "http",
            ["http://10.0.0.1:11434"],
            id="by name",
        ),
        pytest.param(
            _endpoints({"addresses": [{"ip": "10.0.0.1"}], "ports": OPS_HTTP}),
            "11434",
            ["http://10.0.0.1:11434"],
            id="by number",
        ),
        pytest.param(
            _endpoints({"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 8080}]}),
            "",
            ["http://10.0.0.1:8080"],
            id="the only port",
        ),
        pytest.param(
            _endpoints(
                {"addresses": [{"ip": "fd00::1"}], "ports": [{"name": "ops", "port": 9090}]}
            ),
            "",
            ["http://[fd00::1]:9090"],
            id="IPv6",
        ),
        pytest.param(
            _endpoints(
                {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "ops", "port": 1}]},
                {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "ops", "port": 2}]},
            ),
            "",
            ["http://127.0.0.1:1", "http://127.0.0.1:2"],
            id="one subset per port",
        ),
        pytest.param(
            _endpoints({"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "x", "port": 1}]}),
            "ops",
            [],
            id="named port missing",
        ),
    ],
)
def test_endpoint_urls(endpoints: dict[str, Any], port: str, urls: list[str]) -> None:
    assert endpoint_urls(endpoints, port) == urls


@pytest.mark.parametrize(
    ("polls", "now", "known", "demand", "error"),
    [
        pytest.param([], 0, False, {}, "no poll yet", id="nothing yet"),
        pytest.param([(0, {L1: 4.0})], 1, True, {L1: 4.0}, "", id="one poll"),
        pytest.param(
            [(0, {L1: 4.0}), (5, {L1: 2.0}), (10, {})],
            10,
            True,
            {L1: 2.0},
            "",
            id="mean; a model absent from a poll counts 0",
        ),
        pytest.param(
            [(0, {L1: 9.0}), (50, {L1: 2.0}), (60, {L1: 4.0})],
            65,
            True,
            {L1: 3.0},
            "",
            id="polls older than the window drop out",
        ),
        pytest.param(
            [(0, {L1: 4.0}), (5, None, "connection refused")],
            5,
            False,
            {},
            "connection refused",
            id="the last poll failed: unknown",
        ),
        pytest.param(
            [(0, None, "x"), (5, {L1: 4.0}), (10, {L1: 2.0})],
            10,
            True,
            {L1: 3.0},
            "",
            id="an earlier failure is no sample",
        ),
        pytest.param(
            [(0, {L1: 4.0})], 100, False, {}, "no poll within the last 60s", id="polling stopped"
        ),
    ],
)
def test_window(
    polls: list[tuple[Any, ...]],
    now: float,
    known: bool,
    demand: dict[str, float],
    error: str,
) -> None:
    w = DemandWindow(60)
    for at, value, *why in polls:
        w.add(at, value, *why)
    r = w.reading(now)
    assert (r.known, dict(r.demand), r.error) == (known, demand, error)
    assert r.of(L1) == (demand.get(L1, 0.0) if known else None)


# ---- the feed against real balancers ------------------------------------------------------
@pytest.fixture
async def balancers() -> AsyncIterator[list[str]]:
    """Two balancer replicas (no shared state) in front of one emulated node, each with an
    ops port: what the feed sums."""
    async with AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(
            EmulatedFleet(FleetConfig(nodes=[NodeConfig(name="gpu-0")], time_scale=0.01))
        )
        urls = []
        for i in range(2):
            settings = BalancerSettings.build(
                host="127.0.0.1",
                port=0,
                ops_port=0,
                backends=(f"gpu-0={fleet.nodes[0].url}",),
            )
            app = create_app(settings, rng=random.Random(i))
            runner, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1.0)
            stack.push_async_callback(runner.cleanup)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


async def test_feed_sums_replicas_and_holds_when_one_fails(balancers: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        feed = DemandFeed(session, urls=balancers, interval=0.1, window=10, timeout=2)
        reading = await feed.poll()
        assert reading.known, reading.error
        assert reading.samples == 1
        # A replica that does not answer: unknown, not a smaller sum.
        broken = DemandFeed(session, urls=[*balancers, "http://127.0.0.1:9"], timeout=2)
        reading = await broken.poll()
        assert not reading.known
        assert "http://127.0.0.1:9" in reading.error
        assert DemandFeed(session).reading().error.startswith("no balancer configured")
