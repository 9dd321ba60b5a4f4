"""The operator's metrics: fed by the real executor against emulated Ollama nodes, by the
reconcile entry's results, and served over HTTP by its own port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpool_operator.execute import Executor
from modelpool_operator.metrics import OperatorMetrics, serve_metrics
from modelpool_operator.settings import OperatorSettings
from modelpool_operator.spec import parse_pool_spec
from modelpool_operator.state import Action, ActionKind
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig
from ollama_wire.names import canonical

Sample = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Sample:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Sample, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatedFleet]:
    config = FleetConfig(
        nodes=[
            NodeConfig(name="fast", host="127.0.0.1", context_length=4096),
            # ~1.3 s of real time for a 1.3 GB pull at time_scale 0.01
            NodeConfig(name="slow", host="127.0.0.1", context_length=4096, pull_bandwidth=10e6),
        ],
        time_scale=0.01,
    )
    async with EmulatedFleet(config) as f:
        yield f


def act(kind: ActionKind, fleet: EmulatedFleet, i: int, model: str = "llama3.2:1b") -> Action:
    return Action(
        kind=kind,
        pod=f"pod-{i}",
        url=fleet.nodes[i].url,
        model=canonical(model),
        name=model,
        reason="test",
        keep_alive=-1 if kind is ActionKind.LOAD else None,
    )


@pytest.fixture
async def served() -> AsyncIterator[tuple[OperatorMetrics, str]]:
    metrics = OperatorMetrics()
    runner, port = await serve_metrics(metrics, "127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


async def scrape(session: aiohttp.ClientSession, url: str) -> Sample:
    async with session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await resp.text())


async def test_actions_by_kind_and_result(
    fleet: EmulatedFleet, served: tuple[OperatorMetrics, str]
) -> None:
    metrics, url = served
    await fleet.nodes[1].stop_listening()
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=1, backoff=0.01, observer=metrics)
        plan = [
            act(ActionKind.PULL, fleet, 0),
            act(ActionKind.LOAD, fleet, 0),
            act(ActionKind.PULL, fleet, 1),  # refused: failed
            act(ActionKind.LOAD, fleet, 1),  # then skipped, never attempted
        ]
        outcomes = {o.action: o for o in await ex.run(plan)}  # in completion order
        assert [outcomes[a].ok for a in plan] == [True, True, False, False]
        assert outcomes[plan[3]].attempts == 0  # skipped by the pod lanes
        m = await scrape(session, url)
    actions = "ollama_fleet_operator_actions_total"
    assert value(m, actions, kind="pull", result="ok") == 1
    assert value(m, actions, kind="load", result="ok") == 1
    assert value(m, actions, kind="pull", result="failed") == 1
    assert value(m, actions, kind="load", result="skipped") == 1
    assert value(m, actions, kind="unload", result="ok") == 0  # present from the start
    duration = "ollama_fleet_operator_action_duration_seconds_count"
    assert value(m, duration, kind="pull") == 2  # attempted ones only
    assert value(m, duration, kind="load") == 1
    assert value(m, "ollama_fleet_operator_pulls_in_progress") == 0
    info = [labels for (name, labels) in m if name == "ollama_fleet_operator_build_info"]
    assert len(info) == 1 and dict(info[0])["version"]
    assert value(m, "process_resident_memory_bytes")


async def test_pulls_in_progress_while_a_pull_runs_and_after_a_cancel(
    fleet: EmulatedFleet, served: tuple[OperatorMetrics, str]
) -> None:
    metrics, url = served
    gauge = "ollama_fleet_operator_pulls_in_progress"
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=1, observer=metrics)
        task = asyncio.create_task(ex.run([act(ActionKind.PULL, fleet, 1)]))
        async with asyncio.timeout(10):
            while value(await scrape(session, url), gauge) != 1:
                await asyncio.sleep(0.02)
        [outcome] = await task
        assert outcome.ok
        m = await scrape(session, url)
        assert value(m, gauge) == 0
        assert value(m, "ollama_fleet_operator_actions_total", kind="pull", result="ok") == 1
        pulled = value(m, "ollama_fleet_operator_action_duration_seconds_sum", kind="pull")
        assert pulled is not None and pulled > 0.5

        # A pull interrupted (operator shutdown, pool deleted) leaves no pull "in progress".
        fleet.nodes[0].faults.hang(paths=("/api/pull",))
        task = asyncio.create_task(ex.run([act(ActionKind.PULL, fleet, 0, "qwen2.5:7b")]))
        async with asyncio.timeout(10):
            while value(await scrape(session, url), gauge) != 1:
                await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        m = await scrape(session, url)
        assert value(m, gauge) == 0
        assert value(m, "ollama_fleet_operator_actions_total", kind="pull", result="cancelled") == 1


async def test_pools_by_condition_and_the_models_they_want(
    served: tuple[OperatorMetrics, str],
) -> None:
    metrics, url = served

    def status(ready: str, degraded: str) -> dict[str, object]:
        return {
            "conditions": [
                {"type": "Ready", "status": ready, "reason": "x"},
                {"type": "Degraded", "status": degraded, "reason": "y"},
            ]
        }

    selector = {"matchLabels": {"app": "ollama"}}
    spec = {"selector": selector, "models": [{"name": "llama3.2"}, {"name": "qwen2.5:7b"}]}
    metrics.wanted(("ai", "chat"), parse_pool_spec(spec))
    embed = {"selector": selector, "models": [{"name": "nomic-embed-text"}]}
    metrics.wanted(("ml", "embed"), parse_pool_spec(embed))
    metrics.reconciled(("ai", "chat"), status("True", "False"), 0.2)
    metrics.reconciled(("ml", "embed"), status("False", "True"), 0.1)
    metrics.reconciled(("ml", "embed"), None, 0.1)  # deleting: no status written, keep the last
    metrics.reconcile_failed(0.05)
    async with aiohttp.ClientSession() as session:
        m = await scrape(session, url)
        pools = "ollama_fleet_operator_pools"
        assert value(m, pools, condition="Ready", status="True") == 1
        assert value(m, pools, condition="Ready", status="False") == 1
        assert value(m, pools, condition="Degraded", status="True") == 1
        wanted = {dict(lab)["model"] for (n, lab) in m if n.endswith("pool_model_wanted")}
        # named as the balancer names them, so alerts can join on `model`
        assert wanted == {"llama3.2:latest", "qwen2.5:7b", "nomic-embed-text:latest"}
        assert (
            value(
                m,
                "ollama_fleet_operator_pool_model_wanted",
                pool_namespace="ai",
                pool="chat",
                model="qwen2.5:7b",
            )
            == 1
        )
        reconciles = "ollama_fleet_operator_reconciles_total"
        assert value(m, reconciles, result="ok") == 3
        assert value(m, reconciles, result="error") == 1
        assert value(m, "ollama_fleet_operator_reconcile_duration_seconds_count") == 4

        metrics.forget(("ml", "embed"))
        m = await scrape(session, url)
        assert value(m, pools, condition="Degraded", status="True") is None
        assert not [lab for (n, lab) in m if ("pool", "embed") in lab]


@pytest.mark.parametrize(
    ("flags", "environ", "port"),
    [
        pytest.param({}, {}, 0, id="off by default"),
        pytest.param({}, {"OLLAMA_FLEET_OPERATOR_METRICS_PORT": "9090"}, 9090, id="from env"),
        pytest.param(
            {"metrics_port": 8081}, {"OLLAMA_FLEET_OPERATOR_METRICS_PORT": "9090"}, 8081, id="flag"
        ),
    ],
)
def test_metrics_port_setting(flags: dict[str, int], environ: dict[str, str], port: int) -> None:
    assert OperatorSettings.from_sources(flags, environ).process.metrics_port == port


def test_metrics_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metrics port must be 0\.\.65535"):
        OperatorSettings.from_sources({"metrics_port": 70000}, {})
