"""The per-pod lanes: ordering, dependencies, sharing and limits.

The runner here is a script of our own (each action waits until the test releases
it), so every ordering rule is checked exactly; the lanes running real Ollama
actions are covered in test_execute.py and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from modelpool_operator.lanes import Lanes, Outcome, Progress, Ticket
from modelpool_operator.state import Action, ActionKind, Priority


class Script:
    """A runner whose actions finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Future[Outcome]] = {}
        self.changed = asyncio.Event()

    async def run(self, action: Action, progress: Progress) -> Outcome:
        name = label(action)
        self.started.append(name)
        self.changed.set()
        future = self.gates.setdefault(name, asyncio.get_running_loop().create_future())
        progress(5, 10)
        return await future

    def finish(self, action: Action, ok: bool = True, error: str = "") -> None:
        name = label(action)
        future = self.gates.setdefault(name, asyncio.get_running_loop().create_future())
        future.set_result(Outcome(action, ok, error))

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


def act(
    kind: ActionKind, pod: str, model: str, priority: Priority = Priority.LOAD, **kw: object
) -> Action:
    return Action(
        kind=kind,
        pod=pod,
        url=f"http://{pod}",
        model=model,
        name=model,
        reason="test",
        priority=priority,
        **kw,  # type: ignore[arg-type]
    )


def label(a: Action) -> str:
    return f"{a.kind} {a.model}@{a.pod}"


PULL, LOAD, UNLOAD, DELETE = ActionKind.PULL, ActionKind.LOAD, ActionKind.UNLOAD, ActionKind.DELETE


@pytest.fixture
async def lanes() -> AsyncIterator[tuple[Lanes, Script]]:
    script = Script()
    lanes = Lanes(script.run, pulls_per_pod=1, pulls_total=2)
    yield lanes, script
    await lanes.close()


def noop(_: Ticket) -> None:
    pass


async def test_one_load_at_a_time_per_pod_most_urgent_first(
    lanes: tuple[Lanes, Script],
) -> None:
    lane, script = lanes
    first = act(LOAD, "p0", "a")
    lane.submit(first, "pool", noop)
    lane.submit(act(LOAD, "p0", "b", Priority.LOAD), "pool", noop)
    lane.submit(act(LOAD, "p0", "c", Priority.REPLACE), "pool", noop)
    lane.submit(act(UNLOAD, "p0", "d", Priority.FREE), "pool", noop)
    lane.submit(act(LOAD, "p1", "e"), "pool", noop)  # another pod: not held back
    await script.settle()
    assert script.started == ["load a@p0", "load e@p1"]
    script.finish(first)
    await script.settle()
    # unload (free) before the replacement, the replacement before a new replica
    assert script.started[2:] == ["unload d@p0"]
    script.finish(act(UNLOAD, "p0", "d", Priority.FREE))
    await script.settle()
    assert script.started[3:] == ["load c@p0"]


async def test_a_load_waits_for_its_pull_and_starts_when_it_lands(
    lanes: tuple[Lanes, Script],
) -> None:
    lane, script = lanes
    pull, load = act(PULL, "p0", "a"), act(LOAD, "p0", "a")
    lane.submit(pull, "pool", noop)
    waiting = lane.submit(load, "pool", noop)
    other = act(LOAD, "p0", "b")
    lane.submit(other, "pool", noop)
    await script.settle()
    # the pull and an unrelated load side by side; a's load waits for its pull
    assert script.started == ["pull a@p0", "load b@p0"]
    script.finish(other)
    await script.settle()
    assert not waiting.running
    script.finish(pull)
    await script.settle()
    assert script.started[-1] == "load a@p0"


async def test_a_failed_pull_fails_only_its_dependents(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    pull = act(PULL, "p0", "a")
    lane.submit(pull, "pool", noop)
    dependent = lane.submit(act(LOAD, "p0", "a"), "pool", noop)
    unrelated = lane.submit(act(LOAD, "p0", "b"), "pool", noop)
    await script.settle()
    script.finish(pull, ok=False, error="pull model manifest: file does not exist")
    outcome = await dependent.future
    assert not outcome.ok and outcome.attempts == 0
    assert outcome.error == "skipped: pull failed (pull model manifest: file does not exist)"
    assert unrelated.running  # went on


async def test_disk_only_pulls_wait_for_warm_loads(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    load = act(LOAD, "p0", "warm")
    # One plan, the disk-only pull listed first (its model comes first in the spec).
    disk, _, _ = lane.submit_all(
        [act(PULL, "p0", "cold", Priority.DISK), load, act(LOAD, "p0", "cold2")], "pool", noop
    )
    await script.settle()
    assert script.started == ["load warm@p0"] and not disk.running
    script.finish(load)
    await script.settle()
    assert script.started == ["load warm@p0", "load cold2@p0"]
    script.finish(act(LOAD, "p0", "cold2"))
    await script.settle()
    assert script.started[-1] == "pull cold@p0"


async def test_a_plan_in_any_order_still_loads_after_its_pull(
    lanes: tuple[Lanes, Script],
) -> None:
    lane, script = lanes
    load, pull = act(LOAD, "p0", "a"), act(PULL, "p0", "a")
    waiting, _ = lane.submit_all([load, pull], "pool", noop)
    await script.settle()
    assert script.started == ["pull a@p0"] and not waiting.running
    script.finish(pull)
    await script.settle()
    assert script.started == ["pull a@p0", "load a@p0"]


async def test_pull_limits_per_pod_and_in_total(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    for pod, model in (("p0", "a"), ("p0", "b"), ("p1", "c"), ("p2", "d")):
        lane.submit(act(PULL, pod, model), "pool", noop)
    await script.settle()
    assert script.started == ["pull a@p0", "pull c@p1"]  # 1 per pod, 2 in all
    script.finish(act(PULL, "p0", "a"))
    await script.settle()
    assert script.started[2:] == ["pull b@p0"]  # first come among equals


async def test_identical_actions_of_two_pools_share_one_ticket(
    lanes: tuple[Lanes, Script],
) -> None:
    lane, script = lanes
    seen: list[str] = []
    a = lane.submit(act(PULL, "p0", "a", Priority.DISK), "one", lambda t: seen.append("one"))
    b = lane.submit(act(PULL, "p0", "a", Priority.REPLACE), "two", lambda t: seen.append("two"))
    assert a is b and a.priority == Priority.REPLACE  # the more urgent wins
    await script.settle()
    script.finish(act(PULL, "p0", "a"))
    await a.future
    assert script.started == ["pull a@p0"] and sorted(seen) == ["one", "two"]
    assert lane.activities("one") == []


async def test_withdrawn_work_that_nobody_wants_is_dropped(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    busy = act(LOAD, "p0", "a")
    lane.submit(busy, "pool", noop)
    queued = lane.submit(act(LOAD, "p0", "b"), "pool", noop)
    shared = lane.submit(act(LOAD, "p0", "c"), "pool", noop)
    lane.submit(act(LOAD, "p0", "c"), "other", noop)
    await script.settle()
    lane.withdraw(queued, "pool")
    lane.withdraw(shared, "pool")
    assert (await queued.future).error == "withdrawn"
    assert not shared.done  # the other pool still wants it
    activities = lane.activities("other")
    assert [(x.action.model, x.running) for x in activities] == [("c", False)]


async def test_an_unreachable_pod_fails_its_queue_at_once(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    first = act(LOAD, "p0", "a")
    lane.submit(first, "pool", noop)
    later = lane.submit(act(UNLOAD, "p0", "b", Priority.FREE), "pool", noop)
    elsewhere = lane.submit(act(LOAD, "p1", "c"), "pool", noop)
    await script.settle()
    script.finish(first, ok=False, error="unreachable: connection refused")
    outcome = await later.future
    assert outcome.error == "skipped: unreachable: connection refused"
    assert elsewhere.running


async def test_progress_and_activities(lanes: tuple[Lanes, Script]) -> None:
    lane, script = lanes
    lane.submit(act(PULL, "p0", "a"), "pool", noop)
    lane.submit(act(LOAD, "p0", "a"), "pool", noop)
    await script.settle()
    got = {(x.action.kind.value, x.running, x.completed, x.total) for x in lane.activities("pool")}
    assert got == {("pull", True, 5, 10), ("load", False, 0, 0)}


async def test_close_fails_the_queue_and_cancels_running_work() -> None:
    script = Script()
    lane = Lanes(script.run)
    running = lane.submit(act(LOAD, "p0", "a"), "pool", noop)
    queued = lane.submit(act(LOAD, "p0", "b"), "pool", noop)
    await script.settle()
    await lane.close()
    assert (await queued.future).error == "operator stopping"
    assert (await running.future).error.startswith("cancelled")
    late = lane.submit(act(LOAD, "p0", "c"), "pool", noop)
    assert (await late.future).error == "operator stopping"
