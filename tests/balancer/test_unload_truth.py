"""An unload says what it did: it never reports success for a copy it did not unload, never
refuses because it could not see a copy, and says which copies stayed and why.

Polling is slowed to once an hour, so the only poll is the one at start-up: every unload
here comes before the next ``/api/ps``, the case where the balancer used to miss a copy it
had just loaded itself (a 403 "pinned on" another pod, or a 200 that touched no pod).
Unloads are sent as Open WebUI's eject sends them: ``/api/generate``, an empty prompt,
``keep_alive: 0``.
"""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest

from ollama_balancer.core.fleet import PollResult
from ollama_balancer.core.observed import Observation, Seen
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.polling import FleetTracker
from ollama_wire.backend import Backend
from ollama_wire.models import ResidentModel
from ollama_wire.names import canonical
from tests.harness.fleet import Rig, RigFactory, nodes

M = "llama3.2:3b"
KEY = canonical(M)
UNLOAD = {"model": M, "keep_alive": 0}
HOUR = 3600.0


async def start(rig_factory: RigFactory, *specs: tuple[str, list[str], list[str]]) -> Rig:
    """Pods whose preloaded copies expire (a ModelPool's are pinned: :func:`pin_on_pod`)."""
    return await rig_factory(
        nodes(*specs, preload_keep_alive=300.0), poll_interval=HOUR, affinity=False
    )


def records(rig: Rig) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    rig.bal.records.append(seen.append)
    return seen


def loaded(rig: Rig, pod: str) -> bool:
    return bool(rig.node(pod).scheduler.runners)


async def pin_on_pod(rig: Rig, pod: str) -> None:
    """What a ModelPool does: the model loaded on ``pod`` forever, seen by a poll."""
    resp = await rig.session.post(
        rig.node(pod).url + "/api/generate", json={"model": M, "keep_alive": -1}
    )
    assert resp.status == 200
    await rig.poll()


async def test_a_copy_loaded_on_a_named_pod_is_unloaded_at_once(rig_factory: RigFactory) -> None:
    rig = await start(rig_factory, ("a", [M], []), ("b", [M], []))
    async with ollama.AsyncClient(host=rig.url) as client:
        load = await client.generate(model=f"{M}@b", keep_alive="10m")
        assert load.done_reason == "load" and loaded(rig, "b")
        unload = await client.generate(model=M, keep_alive=0)
    assert unload.done_reason == "unload"
    assert not loaded(rig, "b")  # before: 200 answered by the balancer, the copy left warm
    assert rig.node("b").stats.requests["/api/generate"] == 2


async def test_a_cold_load_is_unloaded_at_once(rig_factory: RigFactory) -> None:
    rig = await start(rig_factory, ("a", [M], []))
    async with ollama.AsyncClient(host=rig.url) as client:
        await client.generate(model=M, prompt="hi")
        assert loaded(rig, "a")
        unload = await client.generate(model=M, keep_alive=0)
    assert unload.done_reason == "unload" and not loaded(rig, "a")


async def test_a_fresh_copy_is_unloaded_and_the_pinned_one_said_kept(
    rig_factory: RigFactory,
) -> None:
    rig = await start(rig_factory, ("a", [M], []), ("b", [M], []))
    await pin_on_pod(rig, "a")
    log = records(rig)
    await rig.post("/api/generate", {"model": f"{M}@b", "keep_alive": "10m"})
    async with rig.session.post(rig.url + "/api/generate", json=UNLOAD) as resp:
        assert resp.status == 200, await resp.text()  # before: 403 "pinned on a"
        assert (await resp.json())["done_reason"] == "unload"
        assert resp.headers["X-Ollama-Backend"] == "b"
        assert resp.headers["X-Ollama-Kept"] == "a=pinned"
    assert not loaded(rig, "b") and loaded(rig, "a")
    await rig.until(lambda: len(log) == 2)
    assert log[-1].outcomes == {"a": "kept: pinned", "b": "unloaded"}


async def test_a_pinned_only_model_is_refused_in_words_that_print_well(
    rig_factory: RigFactory,
) -> None:
    rig = await start(rig_factory, ("a", [M], []), ("b", [M], []))
    await pin_on_pod(rig, "a")
    async with rig.session.post(rig.url + "/api/generate", json=UNLOAD) as resp:
        assert resp.status == 403
        raw = await resp.read()
    message = json.loads(raw)["error"]
    # Front ends print the body as it came, or the message inside a Python repr (Open
    # WebUI): nothing in it may come out escaped.
    assert raw == b'{"error": "' + message.encode() + b'"}'
    assert message.isascii() and not set(message) & set("\"'\\")
    assert message.startswith(f"{M} stays loaded: it is pinned on a")
    assert "ModelPool" in message and "allow_client_unload" in message
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(model=M, keep_alive=0)
    assert err.value.status_code == 403 and err.value.error == message
    assert repr({"error": f"403: {message}"}) == "{'error': '403: " + message + "'}"
    assert loaded(rig, "a")


async def test_an_unload_that_failed_somewhere_is_no_success(rig_factory: RigFactory) -> None:
    rig = await start(rig_factory, ("a", [M], [M]), ("b", [M], [M]))
    rig.node("b").faults.fail_next(1, status=500, message="boom", paths=["/api/generate"])
    log = records(rig)
    async with ollama.AsyncClient(host=rig.url) as client:
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(model=M, keep_alive=0)
    assert err.value.status_code == 503
    assert err.value.error.startswith(f"{M} is still loaded: unloaded on a, but not on b")
    assert not loaded(rig, "a") and loaded(rig, "b")
    await rig.until(lambda: bool(log))
    assert log[0].outcomes == {"a": "unloaded", "b": "answered 500: boom"}
    async with ollama.AsyncClient(host=rig.url) as client:  # again: what is left goes
        assert (await client.generate(model=M, keep_alive=0)).done_reason == "unload"
    assert not loaded(rig, "b")
    assert rig.node("a").stats.requests["/api/generate"] == 1  # not sent again where gone


async def test_an_unload_of_a_model_loaded_nowhere_still_touches_no_pod(
    rig_factory: RigFactory,
) -> None:
    rig = await start(rig_factory, ("a", [M], []))
    async with ollama.AsyncClient(host=rig.url) as client:
        assert (await client.generate(model=M, keep_alive=0)).done_reason == "unload"
    assert rig.node("a").stats.requests["/api/generate"] == 0


# ---------------------------------------------------------------- the view's write-through
def _tracker() -> tuple[FleetTracker, list[float]]:
    now = [100.0]
    view = FleetTracker(clock=lambda: now[0])
    view.set_backends([Backend("a", "http://127.0.0.1:9")])
    return view, now


def _copy(expires: str = "2026-01-01T00:00:00Z") -> ResidentModel:
    return ResidentModel(M, 1, 1, "sha256:x", expires)


@pytest.mark.parametrize(
    ("seen", "poll_started", "poll_shows", "resident"),
    [
        pytest.param(Seen.LOADED, 99.0, (), True, id="loaded: a poll begun before cannot know"),
        pytest.param(Seen.LOADED, 101.0, (), False, id="loaded: a later poll is the truth"),
        pytest.param(Seen.UNLOADED, 99.0, (_copy(),), False, id="unloaded: an older poll"),
        pytest.param(Seen.UNLOADED, 101.0, (_copy(),), True, id="unloaded: a later poll"),
    ],
)
def test_a_fact_outlives_the_polls_that_began_before_it(
    seen: Seen, poll_started: float, poll_shows: tuple[Any, ...], resident: bool
) -> None:
    view, now = _tracker()
    view.apply(PollResult("a", 90.0, resident=(_copy(),) if seen is Seen.UNLOADED else ()), 3)
    view.observe(Observation(seen, "a", KEY, now[0], M, "2026-01-01T00:00:00Z"))
    state = view.snapshot.get("a")
    assert state is not None
    assert (state.resident_model(KEY) is not None) is (seen is Seen.LOADED)
    now[0] = 102.0
    view.apply(PollResult("a", poll_started, resident=poll_shows), 3)
    state = view.snapshot.get("a")
    assert state is not None and (state.resident_model(KEY) is not None) is resident
