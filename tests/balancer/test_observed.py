"""The balancer's own observations count at once (issue #24 item 5), not at the next poll.

Tables for the pure parts (a fact applied to a snapshot; a poll that began before a fact
does not undo it, one that began after replaces it), then live pods behind a balancer
that polls once a minute, so only the balancer's own observations can explain what it
knows: the issue's unload of a second copy (the official ollama client), a pull, a delete
and a copy by the admin fan-out, and a pod that answered 404.
"""

from __future__ import annotations

from datetime import UTC, datetime

import ollama
import pytest

from ollama_balancer.core.fleet import BackendState, FleetSnapshot, PollResult
from ollama_balancer.core.observed import Observation, Seen, expiry, observe, still_news
from ollama_balancer.polling import ChangeKind, FleetChange, FleetTracker
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical
from tests.harness.fleet import RigFactory, nodes

M = "llama3.2:3b"
KEY = canonical(M)
OTHER = "qwen2.5:7b"


def pod(
    name: str, installed: tuple[str, ...] = (M,), resident: tuple[str, ...] = ()
) -> BackendState:
    return BackendState(
        Backend(name, f"http://{name}:11434"),
        installed={
            canonical(m): InstalledModel(m, 2_000_000_000, digest=f"d-{m}") for m in installed
        },
        resident={canonical(m): ResidentModel(m, 2_000_000_000, digest=f"d-{m}") for m in resident},
        last_ok=1.0,
    )


SNAP = FleetSnapshot((pod("a", resident=(M,)), pod("b", installed=())), 1.0)


@pytest.mark.parametrize(
    ("fact", "installed", "resident"),
    [
        pytest.param(
            Observation(Seen.UNLOADED, "a", KEY, 2.0),
            {"a": [KEY], "b": []},
            {"a": [], "b": []},
            id="unloaded: not resident, still installed",
        ),
        pytest.param(
            Observation(Seen.DELETED, "a", KEY, 2.0),
            {"a": [], "b": []},
            {"a": [], "b": []},
            id="deleted: neither (a runner that lives on answers 404)",
        ),
        pytest.param(
            Observation(Seen.MISSING, "a", KEY, 2.0),
            {"a": [], "b": []},
            {"a": [], "b": []},
            id="missing (a 404): neither",
        ),
        pytest.param(
            Observation(Seen.PULLED, "b", KEY, 2.0, M),
            {"a": [KEY], "b": [KEY]},
            {"a": [KEY], "b": []},
            id="pulled: installed, as another pod lists it",
        ),
        pytest.param(
            Observation(Seen.LOADED, "b", KEY, 2.0, M, "2026-12-01T00:05:00.000000Z"),
            {"a": [KEY], "b": []},
            {"a": [KEY], "b": [KEY]},
            id="loaded: resident, as big as on disk elsewhere, with its expiry",
        ),
        pytest.param(
            Observation(Seen.UNLOADED, "z", KEY, 2.0),
            {"a": [KEY], "b": []},
            {"a": [KEY], "b": []},
            id="an unknown pod changes nothing",
        ),
    ],
)
def test_observe(
    fact: Observation, installed: dict[str, list[str]], resident: dict[str, list[str]]
) -> None:
    got = observe(SNAP, fact)
    assert {s.name: sorted(s.installed) for s in got.backends} == installed
    assert {s.name: sorted(s.resident) for s in got.backends} == resident
    if fact.seen is Seen.PULLED:
        b = got.get("b")
        assert b is not None and b.installed[KEY].size == 2_000_000_000  # a's copy's size


def test_a_load_seen_is_resident_with_its_vram_and_expiry() -> None:
    got = observe(SNAP, Observation(Seen.LOADED, "b", KEY, 2.0, M, "2026-12-01T00:05:00Z"))
    b = got.get("b")
    assert b is not None
    (runner,) = b.resident.values()
    assert (runner.size_vram, runner.expires_at) == (2_000_000_000, "2026-12-01T00:05:00Z")
    assert b.vram_used == 2_000_000_000  # routing counts its VRAM at once


@pytest.mark.parametrize(
    ("keep_alive", "expected"),
    [
        pytest.param(None, "2026-12-01T00:05:00.000000Z", id="not given: Ollama's 5 minutes"),
        pytest.param(60.0, "2026-12-01T00:01:00.000000Z", id="seconds"),
        pytest.param(float("inf"), "2318-", id="forever (keep_alive -1)"),
    ],
)
def test_expiry(keep_alive: float | None, expected: str) -> None:
    assert expiry(keep_alive, datetime(2026, 12, 1, tzinfo=UTC)).startswith(expected)


def test_a_pulled_model_no_pod_listed_gets_a_bare_entry() -> None:
    got = observe(SNAP, Observation(Seen.PULLED, "b", canonical(OTHER), 2.0, OTHER))
    b = got.get("b")
    assert b is not None and b.installed[canonical(OTHER)].name == OTHER


def test_still_news() -> None:
    facts = [
        Observation(Seen.UNLOADED, "a", KEY, 10.0),
        Observation(Seen.UNLOADED, "b", KEY, 10.0),
        Observation(Seen.DELETED, "a", KEY, 1.0),
    ]
    # A poll of a that began at 5: the fact of 10 is newer; the one of 1 it already shows.
    assert still_news(facts, "a", 5.0, 20.0) == facts[:2]
    assert still_news(facts, "a", 10.5, 20.0) == facts[1:2]
    assert still_news(facts, "a", 5.0, 10.0 + 300.0) == []  # old news, never confirmed


def test_the_tracker_keeps_a_fact_over_an_older_poll() -> None:
    tracker = FleetTracker(clock=lambda: 12.0)
    changes: list[FleetChange] = []
    tracker.subscribe(changes.append)
    tracker.set_backends([Backend("a", "http://a:11434")])
    ps = (ResidentModel(M, 1),)
    tracker.apply(PollResult("a", 1.0, (InstalledModel(M, 1),), ps), fail_threshold=3)
    tracker.observe(Observation(Seen.UNLOADED, "a", KEY, 10.0))
    assert changes[-1] == FleetChange(ChangeKind.UNLOADED, "a", M)
    # A poll sent at 9, before the unload, answers with the model still resident.
    tracker.apply(PollResult("a", 9.0, (InstalledModel(M, 1),), ps), fail_threshold=3)
    a = tracker.snapshot.get("a")
    assert a is not None and not a.resident
    assert changes[-1].kind is not ChangeKind.LOADED  # no flapping back
    # A poll sent after the unload is the truth again (here: someone loaded it since).
    tracker.apply(PollResult("a", 11.0, (InstalledModel(M, 1),), ps), fail_threshold=3)
    a = tracker.snapshot.get("a")
    assert a is not None and KEY in a.resident


# ------------------------------------------------------------------ live, no poll meanwhile
SLOW_POLLS = {"poll_interval": 60.0}


async def test_unloading_a_second_copy_loaded_moments_ago(rig_factory: RigFactory) -> None:
    """The issue's case: llama3.2 pinned on gpu-a (as a ModelPool would), a second copy
    loaded on gpu-c, then an unload before any poll: the new copy goes, the pinned stays."""
    rig = await rig_factory(
        nodes(("gpu-a", [M], [M]), ("gpu-c", [M], [])), default_slots=2, **SLOW_POLLS
    )
    async with ollama.AsyncClient(host=rig.url) as client:
        loaded = await client.generate(model=f"{M}@gpu-c", prompt="")
        assert loaded.done_reason == "load"
        assert rig.node("gpu-c").scheduler.runners
        unloaded = await client.generate(model=M, prompt="", keep_alive=0)
        assert unloaded.done_reason == "unload"
        await rig.until(lambda: not rig.node("gpu-c").scheduler.runners)
        assert rig.node("gpu-a").scheduler.runners  # the pinned copy is the operator's
        # The view knows at once: the next request goes to the warm pinned copy, it does
        # not take gpu-c for warm and load it there again.
        answer = await client.generate(model=M, prompt="hi", options={"num_predict": 2})
        assert answer.done
    assert rig.node("gpu-c").stats.loads_started == 1
    assert rig.node("gpu-a").stats.requests["/api/generate"] == 1
    gpu_c = rig.bal.view.snapshot.get("gpu-c")
    assert gpu_c is not None and not gpu_c.resident


async def test_a_pull_delete_and_copy_count_at_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], [])), admin="fanout", **SLOW_POLLS)
    async with ollama.AsyncClient(host=rig.url) as client:
        await client.pull(OTHER)
        listed = {m.model for m in (await client.list()).models}
        assert OTHER in listed  # /api/tags from the view: no poll since the pull
        # Routed to a pod that has it now, with no auto-pull.
        answer = await client.generate(model=OTHER, prompt="hi", options={"num_predict": 2})
        assert answer.done
        await client.copy(OTHER, "mine:latest")
        assert "mine:latest" in {m.model for m in (await client.list()).models}
        await client.delete(OTHER)
        assert OTHER not in {m.model for m in (await client.list()).models}
        with pytest.raises(ollama.ResponseError) as refused:
            await client.generate(model=OTHER, prompt="hi")
        assert refused.value.status_code == 404
    # The 404 came from the balancer's view: no pod was asked after the delete.
    assert sum(n.stats.requests["/api/generate"] for n in rig.fleet.nodes) == 1


async def test_a_pod_that_answered_404_is_not_tried_first_again(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [M])), **SLOW_POLLS)
    # Unloaded and deleted behind the balancer's back on a: only a request can find out.
    url = rig.node("a").url
    unload = await rig.session.post(url + "/api/generate", json={"model": M, "keep_alive": 0})
    assert unload.status == 200
    deleted = await rig.session.delete(url + "/api/delete", json={"model": M})
    assert deleted.status == 200
    before = rig.node("a").stats.requests["/api/generate"]
    async with ollama.AsyncClient(host=rig.url) as client:
        for _ in range(3):
            answer = await client.generate(model=M, prompt="hi", options={"num_predict": 2})
            assert answer.done
    # At most the one that found out; then b only, with no poll between.
    assert rig.node("a").stats.requests["/api/generate"] - before <= 1
    assert rig.node("b").stats.requests["/api/generate"] == 3
