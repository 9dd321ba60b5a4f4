"""Load, unload and runner options across a fleet: tables for the pure parts, then live pods.

* an unload (empty prompt, ``keep_alive: 0``) reaches every pod holding the model and is
  answered once; a model loaded nowhere is answered without touching a pod;
* a load of a model warm somewhere refreshes that copy instead of loading another;
* a request whose ``num_ctx`` no warm copy runs never reloads a pod serving other requests;
* ``pin_num_ctx`` rewrites a client's ``num_ctx``, so clients cannot thrash a pinned copy.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime

import pytest

from ollama_balancer.core.fleet import BackendState, FleetSnapshot
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.rankers import Reason
from ollama_balancer.core.requests import Intent, parse_request
from ollama_balancer.core.routing import Policy, RouteRequest, route
from ollama_balancer.core.unload import plan_unload, unload_answer
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical
from tests.harness.cut import read_cut_lines
from tests.harness.fleet import Rig, RigFactory, nodes
from tests.harness.routing_cases import at

M = "llama3.2:3b"
KEY = canonical(M)
NOW = 1000.0
WALL = datetime(2026, 12, 1, tzinfo=UTC)
SOON = "2026-12-01T00:05:00Z"
FOREVER = "2318-12-05T21:47:02.903047553Z"


# ------------------------------------------------------------------ pure: intent, num_ctx
@pytest.mark.parametrize(
    ("path", "doc", "intent", "num_ctx"),
    [
        pytest.param("/api/generate", {"prompt": "hi"}, Intent.INFER, None, id="generate"),
        pytest.param("/api/generate", {}, Intent.LOAD, None, id="empty prompt loads"),
        pytest.param("/api/generate", {"keep_alive": -1}, Intent.LOAD, None, id="pin load"),
        pytest.param("/api/generate", {"keep_alive": 0}, Intent.UNLOAD, None, id="unload"),
        pytest.param("/api/generate", {"keep_alive": "0s"}, Intent.UNLOAD, None, id="unload 0s"),
        pytest.param("/api/chat", {"messages": []}, Intent.LOAD, None, id="chat load"),
        pytest.param(
            "/api/chat", {"messages": [], "keep_alive": 0}, Intent.UNLOAD, None, id="chat unload"
        ),
        pytest.param("/api/embed", {"keep_alive": 0}, Intent.UNLOAD, None, id="embed unload"),
        pytest.param("/api/embed", {"input": "x"}, Intent.INFER, None, id="embed"),
        pytest.param("/api/generate", {"keep_alive": "-1"}, Intent.INFER, None, id="bad: Ollama"),
        pytest.param("/v1/chat/completions", {"messages": []}, Intent.INFER, None, id="/v1 never"),
        pytest.param(
            "/api/chat",
            {"messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 8192}},
            Intent.INFER,
            8192,
            id="num_ctx",
        ),
        pytest.param(
            "/api/generate",
            {"prompt": "x", "options": {"num_ctx": 0}},
            Intent.INFER,
            None,
            id="num_ctx 0 is automatic",
        ),
    ],
)
def test_intent_and_num_ctx(
    path: str, doc: dict[str, object], intent: Intent, num_ctx: int | None
) -> None:
    req = parse_request(json.dumps({"model": M, **doc}).encode(), path, None)
    assert (req.intent, req.num_ctx) == (intent, num_ctx)


# ------------------------------------------------------------------ pure: routing, unload plan
def pod(
    name: str,
    *,
    resident: bool = True,
    ctx: int = 4096,
    expires: str = SOON,
    down: bool = False,
    slots: int = 2,
) -> BackendState:
    installed = {KEY: InstalledModel(M, 2 << 30, "sha256:1")}
    res = {KEY: ResidentModel(M, 2 << 30, 2 << 30, "sha256:1", expires, ctx)}
    return BackendState(
        backend=Backend(name, f"http://{name}", slots=slots, vram_bytes=24 << 30),
        installed=installed,
        resident=res if resident else {},
        last_ok=None if down else NOW,
        failures=3 if down else 0,
    )


def busy(ledger: Ledger, backend: str, n: int = 1) -> Ledger:
    for i in range(n):
        ledger.begin(backend, KEY, cold=False, now=NOW, request_id=f"{backend}{i}")
    return ledger


@pytest.mark.parametrize(
    ("pods", "ledger", "num_ctx", "load_only", "expected"),
    [
        pytest.param(
            [pod("a", ctx=4096), pod("b", ctx=8192)],
            Ledger(),
            8192,
            False,
            [("b", Reason.RESIDENT), ("a", Reason.RELOAD)],
            id="the copy with the asked context wins",
        ),
        pytest.param(
            [pod("a", ctx=4096), pod("b", resident=False)],
            busy(Ledger(), "a"),
            8192,
            False,
            [("b", Reason.COLD_LOAD), ("a", Reason.RELOAD)],
            id="never reload a copy serving others while a pod can load",
        ),
        pytest.param(
            [pod("a", ctx=4096)],
            Ledger(),
            None,
            False,
            [("a", Reason.RESIDENT)],
            id="no num_ctx: any copy will do",
        ),
        pytest.param(
            [pod("a", resident=False), pod("b")],
            busy(Ledger(), "b", 8),
            None,
            True,
            [("b", Reason.RESIDENT)],
            id="a preload refreshes the warm copy, however busy",
        ),
        pytest.param(
            [pod("a", resident=False), pod("b", resident=False)],
            Ledger(),
            None,
            True,
            [("a", Reason.COLD_LOAD), ("b", Reason.COLD_LOAD)],
            id="a preload of a cold model loads it",
        ),
    ],
)
def test_runner_options_and_preload_ranking(
    pods: list[BackendState],
    ledger: Ledger,
    num_ctx: int | None,
    load_only: bool,
    expected: list[tuple[str, Reason]],
) -> None:
    snap = FleetSnapshot(tuple(pods), NOW)
    d = route(
        RouteRequest(KEY, M, num_ctx=num_ctx, load_only=load_only),
        at(snap, ledger, NOW),
        Policy(),
        random.Random(0),
    )
    got = [(c.backend, c.reason) for c in d.ranked]
    if expected[0][1] is Reason.COLD_LOAD and len(expected) == 2 and load_only:
        assert sorted(got) == sorted(expected)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("pods", "loading", "allow", "targets", "refused"),
    [
        pytest.param(
            [pod("a"), pod("b"), pod("c", resident=False)],
            [],
            False,
            ("a", "b"),
            (),
            id="every holder",
        ),
        pytest.param([pod("a", resident=False)], ["a"], False, ("a",), (), id="a load under way"),
        pytest.param([pod("a", resident=False)], [], False, (), (), id="loaded nowhere"),
        pytest.param([pod("a", down=True)], [], False, (), (), id="down pods are skipped"),
        pytest.param(
            [pod("a", expires=FOREVER)], [], False, (), ("a",), id="pinned forever: refused"
        ),
        pytest.param([pod("a", expires=FOREVER)], [], True, ("a",), (), id="allowed"),
        pytest.param(
            [pod("a", expires=FOREVER), pod("b")],
            [],
            False,
            ("b",),
            (),
            id="unload the rest, keep the pinned",
        ),
    ],
)
def test_plan_unload(
    pods: list[BackendState],
    loading: list[str],
    allow: bool,
    targets: tuple[str, ...],
    refused: tuple[str, ...],
) -> None:
    ledger = Ledger()
    for name in loading:
        ledger.begin(name, KEY, cold=True, now=NOW, request_id="l")
    plan = plan_unload(
        at(FleetSnapshot(tuple(pods), NOW), ledger, NOW), KEY, wall=WALL, allow_pinned=allow
    )
    assert (plan.targets, plan.refused) == (targets, refused)


def test_unload_answers_in_ollamas_shapes() -> None:
    assert unload_answer("/api/generate", M, WALL)["done_reason"] == "unload"
    assert unload_answer("/api/chat", M, WALL)["message"] == {"role": "assistant", "content": ""}
    assert unload_answer("/api/embed", M, WALL) == {"model": M, "embeddings": []}


# ------------------------------------------------------------------ live, three emulated pods
THREE = [("a", [M], [M]), ("b", [M], [M]), ("c", [M], [])]


async def test_unload_reaches_every_holder_and_is_answered_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory(
        nodes(*THREE, num_parallel=2, preload_keep_alive=300.0), default_slots=2
    )
    resp = await rig.post("/api/generate", {"model": M, "keep_alive": 0})
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["done"] is True and doc["done_reason"] == "unload"
    assert set(resp.headers["X-Ollama-Backend"].split(",")) == {"a", "b"}
    assert resp.headers["X-Route-Reason"] == "unload"
    await rig.until(lambda: all(not n.scheduler.runners for n in rig.fleet.nodes))
    assert [n.stats.requests["/api/generate"] for n in rig.fleet.nodes] == [1, 1, 0]


async def test_unload_of_a_model_loaded_nowhere_touches_no_pod(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], []), ("b", [M], [])))
    resp = await rig.post("/api/chat", {"model": M, "messages": [], "keep_alive": 0})
    assert resp.status == 200
    doc = await resp.json()
    assert doc["done_reason"] == "unload" and doc["message"]["content"] == ""
    assert (
        sum(
            sum(n.stats.requests.values())
            - n.stats.requests["/api/ps"]
            - n.stats.requests["/api/tags"]
            - n.stats.requests["/api/version"]
            for n in rig.fleet.nodes
        )
        == 0
    )
    metrics = await (await rig.session.get(rig.url + "/metrics")).text()
    assert not any(
        line.startswith("ollama_fleet_cold_loads_total{") and not line.endswith(" 0.0")
        for line in metrics.splitlines()
    )


async def test_a_pinned_copy_is_protected_from_client_unloads(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [])))
    direct = await rig.session.post(
        rig.node("a").url + "/api/generate", json={"model": M, "keep_alive": -1}
    )
    assert direct.status == 200
    await rig.poll()
    resp = await rig.post("/api/generate", {"model": M, "keep_alive": 0})
    assert resp.status == 403
    assert "allow_client_unload" in (await resp.json())["error"]
    assert rig.node("a").scheduler.runners  # still loaded


async def test_load_of_a_warm_model_loads_nothing(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(*THREE, num_parallel=1), default_slots=1)
    # keep both warm copies busy so "least loaded" would otherwise spill to c
    held = [asyncio.ensure_future(_stream(rig, "a")), asyncio.ensure_future(_stream(rig, "b"))]
    await rig.until(lambda: all(rig.bal.ledger.inflight(n, KEY) == 1 for n in "ab"))
    resp = await rig.post("/api/generate", {"model": M, "keep_alive": "10m"})
    assert resp.status == 200
    assert (await resp.json())["done_reason"] == "load"
    assert resp.headers["X-Ollama-Backend"] in ("a", "b")
    assert rig.node("c").stats.loads_started == 0
    for h in held:
        h.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def _stream(rig: Rig, backend: str) -> None:
    """A long generation on ``backend`` (its tokens slowed 1000×) until cancelled."""
    rig.node(backend).faults.slow(1000.0)
    async with rig.session.post(
        rig.url + "/api/generate",
        json={"model": M, "prompt": "x", "options": {"num_predict": 100000}},
        headers={"X-Ollama-Backend": backend},
    ) as resp:
        async for _ in resp.content:
            pass


async def test_other_num_ctx_never_reloads_a_busy_pod(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [M]), ("b", [M], [])), default_slots=2)
    held = asyncio.ensure_future(_stream(rig, "a"))
    await rig.until(lambda: rig.bal.ledger.inflight("a", KEY) == 1)
    resp = await rig.post(
        "/api/generate",
        {"model": M, "prompt": "hi", "stream": False, "options": {"num_ctx": 2048}},
    )
    assert resp.status == 200
    assert resp.headers["X-Ollama-Backend"] == "b"
    assert resp.headers["X-Route-Reason"] == "cold-load"
    assert rig.node("a").stats.loads_started == 0  # a's copy was never reloaded
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)


async def test_pinned_num_ctx_is_rewritten_and_says_so(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", [M], [])), pin_num_ctx=(f"{M}=8192",), default_slots=1)
    for options in ({}, {"num_ctx": 2048}, {"num_ctx": 8192}):
        resp = await rig.post(
            "/api/generate", {"model": M, "prompt": "hi", "stream": False, "options": options}
        )
        assert resp.status == 200
        if options.get("num_ctx") != 8192:
            assert "num_ctx" in resp.headers["X-Route-Reason"]
            assert "8192 (pinned)" in resp.headers["X-Route-Reason"]
    runner = next(iter(rig.node("a").scheduler.runners.values()))
    assert runner.num_ctx == 8192
    assert rig.node("a").stats.loads_started == 1  # loaded once, never reloaded


async def test_a_broken_ndjson_stream_ends_with_an_error_line_and_a_cut(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(nodes(("a", [M], [M])))
    rig.node("a").faults.drop_after(chunks=2)
    async with rig.session.post(
        rig.url + "/api/generate", json={"model": M, "prompt": "x"}
    ) as resp:
        assert resp.status == 200
        lines = await read_cut_lines(resp)
    assert not any(line.get("done") for line in lines)  # nothing reads as a finished answer
    assert lines[-1]["error"]
