"""The executor against emulated Ollama nodes: retries, isolation, idempotence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from modelpool_operator.execute import Executor, Outcome
from modelpool_operator.state import Action, ActionKind, Priority
from ollama_emulator import EmulatedFleet, FleetConfig, ModelSpec, NodeConfig, default_catalogue
from ollama_emulator.registry import layers
from ollama_wire.client import OllamaClient
from ollama_wire.names import canonical


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatedFleet]:
    config = FleetConfig(
        nodes=[NodeConfig(name=f"n{i}", host="127.0.0.1", context_length=4096) for i in range(2)],
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


async def resident(session: aiohttp.ClientSession, url: str) -> list[str]:
    return [m["name"] for m in await OllamaClient(session, url).ps()]


async def test_pull_then_load_in_order_and_idempotent(fleet: EmulatedFleet) -> None:
    reports: list[Outcome] = []
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, backoff=0.01, report=reports.append)
        # Given in the wrong order on purpose: load must wait for the pull on the same pod.
        plan = [act(ActionKind.LOAD, fleet, 0), act(ActionKind.PULL, fleet, 0)]
        outcomes = await ex.run(plan)
        assert [(o.action.kind, o.ok) for o in outcomes] == [("pull", True), ("load", True)]
        assert await resident(session, fleet.nodes[0].url) == ["llama3.2:1b"]
        # Running the same plan again changes nothing and succeeds.
        assert all(o.ok for o in await ex.run(plan))
        assert await resident(session, fleet.nodes[0].url) == ["llama3.2:1b"]
        # Unload and delete twice: the second time there is nothing left, still a success.
        cleanup = [act(ActionKind.UNLOAD, fleet, 0), act(ActionKind.DELETE, fleet, 0)]
        assert all(o.ok for o in await ex.run(cleanup))
        assert all(o.ok for o in await ex.run(cleanup))
    assert len(reports) == 8


async def test_transient_failures_are_retried(fleet: EmulatedFleet) -> None:
    fleet.nodes[0].faults.fail_next(2, status=500, message="boom", paths=("/api/pull",))
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=3, backoff=0.01)
        [outcome] = await ex.run([act(ActionKind.PULL, fleet, 0)])
    assert outcome.ok and outcome.attempts == 3


async def test_verdicts_are_not_retried(fleet: EmulatedFleet) -> None:
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=3, backoff=0.01)
        # Not installed: Ollama answers 404, asking again would not help.
        [outcome] = await ex.run([act(ActionKind.LOAD, fleet, 0)])
    assert not outcome.ok and outcome.attempts == 1
    assert "not found" in outcome.error


async def test_one_pods_failure_never_blocks_another(fleet: EmulatedFleet) -> None:
    await fleet.nodes[0].stop_listening()
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=2, backoff=0.01, concurrency=1)
        plan = [
            act(ActionKind.PULL, fleet, 0),
            act(ActionKind.LOAD, fleet, 0),
            act(ActionKind.PULL, fleet, 1),
            act(ActionKind.LOAD, fleet, 1),
        ]
        outcomes = {(o.action.pod, o.action.kind): o for o in await ex.run(plan)}
        assert outcomes[("pod-1", ActionKind.LOAD)].ok
        assert await resident(session, fleet.nodes[1].url) == ["llama3.2:1b"]
    pull0, load0 = outcomes[("pod-0", ActionKind.PULL)], outcomes[("pod-0", ActionKind.LOAD)]
    assert not pull0.ok and pull0.error.startswith("unreachable") and pull0.attempts == 2
    # The rest of that pod's work is skipped at once, not retried against a dead pod.
    assert not load0.ok and load0.attempts == 0


async def test_unknown_model_pull_fails_cleanly(fleet: EmulatedFleet) -> None:
    async with aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=1)
        [outcome] = await ex.run([act(ActionKind.PULL, fleet, 0, "no-such-model:7b")])
    assert not outcome.ok
    assert "file does not exist" in outcome.error


@pytest.mark.parametrize(
    ("model", "verdict"),
    [
        pytest.param("no-such-model:7b", "ModelNotFound", id="unknown model"),
        pytest.param("acme/secret:1b", "Unauthorized", id="private model"),
    ],
)
async def test_verdicts_end_the_action_at_once(model: str, verdict: str) -> None:
    catalogue = default_catalogue().with_specs(
        [ModelSpec(name="acme/secret:1b", size_bytes=10**9, private=True)]
    )
    config = FleetConfig(nodes=[NodeConfig(name="n0")], catalogue=catalogue, time_scale=0.01)
    async with EmulatedFleet(config) as f, aiohttp.ClientSession() as session:
        ex = Executor(session, attempts=3, backoff=0.01)
        [outcome] = await ex.run([act(ActionKind.PULL, f, 0, model)])
        assert f.nodes[0].stats.requests["/api/pull"] == 1  # asked once, not 3 times
    assert not outcome.ok and outcome.attempts == 1 and outcome.verdict == verdict


async def test_a_pull_bigger_than_its_room_is_abandoned_at_its_first_progress_line() -> None:
    """Without the registry's manifest, the first progress line with a total tells the size:
    the pull stops there, with next to nothing downloaded."""
    config = FleetConfig(nodes=[NodeConfig(name="n0")], time_scale=0.01)
    async with EmulatedFleet(config) as f, aiohttp.ClientSession() as session:
        node = f.nodes[0]
        spec = node.catalogue["llama3.3:70b"]
        pull = replace(act(ActionKind.PULL, f, 0, "llama3.3:70b"), max_bytes=24 * 2**30)
        [outcome] = await Executor(session, attempts=3).run([pull])
        assert not outcome.ok and outcome.attempts == 1
        assert "more than the 24.0 GiB of VRAM it was placed in" in outcome.error
        assert outcome.size >= layers(spec)[0][1]  # learned: at least the weights
        weights = layers(spec)[0][0]
        await asyncio.sleep(0.05)
        assert node.puller.blobs.get(weights, 0) < 0.01 * spec.size_bytes
        assert node.library.find("llama3.3:70b") is None
        # A pull that fits its room goes through, reporting progress as it goes.
        seen: list[tuple[int, int]] = []
        small = replace(act(ActionKind.PULL, f, 0, "llama3.2:1b"), max_bytes=24 * 2**30)
        ok = await Executor(session).run_one(small, lambda done, total: seen.append((done, total)))
        assert ok.ok and seen[-1][0] == seen[-1][1] == node.catalogue["llama3.2:1b"].size_bytes


async def test_warm_loads_go_before_disk_only_pulls_on_a_real_node() -> None:
    """One plan on one pod (real time): a disk-only pull listed first starts only after the
    warm load, which does not wait for it."""
    spec = ModelSpec(name="warm:1b", size_bytes=10**9, load_seconds=0.5)
    config = FleetConfig(
        nodes=[
            NodeConfig(name="n0", installed=("warm:1b",), context_length=4096, pull_bandwidth=1e10)
        ],
        catalogue=default_catalogue().with_specs([spec]),
        time_scale=1.0,
    )
    async with EmulatedFleet(config) as f, aiohttp.ClientSession() as session:
        node = f.nodes[0]
        seen: dict[str, float] = {}

        async def watch() -> None:
            while True:
                if "load" not in seen and node.scheduler.runner_for(spec) is not None:
                    seen["load"] = asyncio.get_running_loop().time()
                if "pull" not in seen and node.stats.pulls_started:
                    seen["pull"] = asyncio.get_running_loop().time()
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        disk = replace(act(ActionKind.PULL, f, 0, "llama3.2:1b"), priority=Priority.DISK)
        load = replace(act(ActionKind.LOAD, f, 0, "warm:1b"), priority=Priority.LOAD)
        try:
            outcomes = await Executor(session).run([disk, load])
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert all(o.ok for o in outcomes)
        assert [o.action.kind for o in outcomes] == ["load", "pull"]
        assert seen["load"] <= seen["pull"]
