"""The attempt loop's decisions, against in-memory pods behind the real pipeline and proxy:
which failures move on to the next pod, which end the request, what the client gets, and
that every slot is given back."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ollama_balancer.admin import Admin
from ollama_balancer.core.fleet import PollResult
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.record import RequestRecord
from ollama_balancer.core.shared.local import LocalState
from ollama_balancer.pipeline import front_door
from ollama_balancer.polling import FleetTracker
from ollama_balancer.proxy import Proxy
from ollama_balancer.settings import BalancerSettings
from ollama_balancer.state import BALANCER, Balancer
from ollama_balancer.upstream import (
    ConnectError,
    Disconnected,
    Response,
    Transport,
    UpstreamError,
)
from ollama_wire.backend import Backend
from ollama_wire.models import parse_resident
from tests.harness.cut import read_cut_lines
from tests.harness.eventually import eventually
from tests.harness.memory_pods import MemoryResponse, MemoryTransport, Pod, Sent

M = "llama3.2:3b"
GEN = {"model": M, "prompt": "hi", "stream": False}
OK = b'{"model":"llama3.2:3b","response":"hello","done":true,"eval_count":1}'
PODS = ("a", "b")


@dataclass
class Stage:
    """A balancer (pipeline + proxy) in front of in-memory pods, on loopback."""

    url: str
    transport: MemoryTransport
    shared: LocalState
    records: list[RequestRecord]
    http: aiohttp.ClientSession

    async def post(self, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.http.post(self.url + "/api/generate", json=body) as resp:
            return resp, await resp.read()

    def pods_tried(self) -> list[str]:
        return [s.base_url.rsplit("/", 1)[1] for s in self.transport.sent]


def url_of(pod: str) -> str:
    return f"http://pods.invalid/{pod}"


@asynccontextmanager
async def stage(pod: Pod, **overrides: Any) -> AsyncIterator[Stage]:
    """Pods a and b, the model resident on both, each answering through ``pod``."""
    settings = BalancerSettings.build(**overrides)
    view = FleetTracker()
    view.set_backends([Backend(name, url_of(name), slots=2) for name in PODS])
    for name in PODS:
        resident = parse_resident([{"name": M, "model": M, "size": 1}])
        view.apply(PollResult(name, time.monotonic(), resident=resident), fail_threshold=3)
    transport = MemoryTransport({url_of(name): pod for name in PODS})
    ledger = Ledger()
    shared = LocalState(ledger)
    proxy = Proxy(settings, view, ledger, transport, rng=random.Random(0), shared=shared)
    bal = Balancer(
        settings=settings,
        view=view,
        ledger=ledger,
        shared=shared,
        transport=Transport(connect_timeout=1.0),  # never opened: the proxy has the pods
        proxy=proxy,
        admin=Admin(settings, lambda: [], transport),
    )
    records: list[RequestRecord] = []
    bal.records.append(records.append)
    app = web.Application(middlewares=[front_door])
    app[BALANCER] = bal
    app.router.add_post("/api/generate", proxy.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Stage(f"http://127.0.0.1:{port}", transport, shared, records, http)
        assert ledger.total_inflight() == 0  # every slot given back
    finally:
        await runner.cleanup()


# ---- how a pod behaves on its n-th request (whichever pod routing picked)
Behaviour = Callable[[Sent], Any]


def in_turn(*behaviours: Behaviour) -> Pod:
    """The first request (to whichever pod) gets the first behaviour, and so on."""
    left = list(behaviours)

    async def pod(sent: Sent) -> Response:
        result = left.pop(0)(sent)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, MemoryResponse)
        return result

    return pod


def answers(status: int = 200, body: bytes = OK) -> Behaviour:
    return lambda _: MemoryResponse(
        status, [body], content_type="application/json", content_length=len(body)
    )


def error(status: int, message: str) -> Behaviour:
    return answers(status, json.dumps({"error": message}).encode())


def fails(exc: UpstreamError) -> Behaviour:
    def raise_(_: Sent) -> None:
        raise exc

    return raise_


def hangs() -> Behaviour:
    async def forever(_: Sent) -> None:
        await asyncio.Event().wait()

    return forever


@pytest.mark.parametrize(
    ("behaviours", "settings", "status", "tried", "retry"),
    [
        pytest.param(
            [error(503, "server busy"), answers()], {}, 200, 2, "answered 503: server busy",
            id="503 before the first byte: the next pod",
        ),
        pytest.param(
            [fails(ConnectError("refused")), answers()], {}, 200, 2,
            "unreachable: ConnectError: refused", id="refused: the next pod",
        ),
        pytest.param(
            [fails(Disconnected("closed unanswered")), answers()], {}, 200, 2,
            "unreachable: Disconnected", id="cut before the headers: the next pod",
        ),
        pytest.param(
            [error(404, f"model '{M}' not found"), answers()], {}, 200, 2, "answered 404",
            id="404 there: the next pod",
        ),
        pytest.param(
            [error(400, "invalid options")], {}, 400, 1, None,
            id="400 is the pod's answer: relayed, not retried",
        ),
        pytest.param(
            [hangs(), answers()], {"first_byte_timeout": 0.2}, 504, 1, "sent nothing for 0.2s",
            id="silent past first_byte_timeout: 504, never run twice",
        ),
        pytest.param(
            [error(500, "load failed"), error(500, "load failed")], {}, 500, 2, "answered 500",
            id="every pod fails alike: the pod's own answer",
        ),
        pytest.param(
            [error(503, "server busy")], {"max_attempts": 1}, 503, 1, "answered 503",
            id="max_attempts bounds the tries",
        ),
    ],
)  # fmt: skip
async def test_which_failures_move_on(
    behaviours: list[Behaviour],
    settings: dict[str, Any],
    status: int,
    tried: int,
    retry: str | None,
) -> None:
    async with stage(in_turn(*behaviours), **settings) as s:
        resp, body = await s.post(GEN)
        assert resp.status == status, body
        pods = s.pods_tried()
        assert len(pods) == tried and len(set(pods)) == tried  # never the same pod twice
        if status == 200:
            assert body == OK and resp.headers["X-Ollama-Backend"] == pods[-1]
        record = s.records[-1]
        assert record.attempts == tried and record.status == status
        if retry is None:
            assert record.retries == []
        else:
            assert retry in record.retries[0] and record.retries[0].startswith(pods[0])


async def test_a_fast_failure_cools_the_pod_down() -> None:
    async with stage(in_turn(fails(ConnectError("refused")), answers())) as s:
        resp, _ = await s.post(GEN)
        assert resp.status == 200
        first, second = s.pods_tried()
        now = time.monotonic()
        occupancy = s.shared.occupancy()
        assert occupancy.penalised(first, now) and not occupancy.penalised(second, now)


async def test_a_stream_broken_after_its_first_byte_is_not_retried() -> None:
    line = b'{"model":"llama3.2:3b","response":"he","done":false}\n'
    broken = MemoryResponse(200, [line, Disconnected("reset by peer")])
    async with stage(in_turn(lambda _: broken, answers())) as s:
        async with s.http.post(s.url + "/api/generate", json={**GEN, "stream": True}) as resp:
            assert resp.status == 200
            lines = await read_cut_lines(resp)
        assert lines[0]["response"] == "he"
        assert list(lines[-1]) == ["error"] and "stream broken" in lines[-1]["error"]
        assert len(s.pods_tried()) == 1
        record = s.records[-1]
        assert record.broken_stream and record.bytes_out == len(line)
    assert broken.closed


async def test_the_client_leaving_closes_the_pods_answer_and_frees_the_slot() -> None:
    live = MemoryResponse(200, open=True)
    async with stage(in_turn(lambda _: live)) as s:
        resp = await s.http.post(s.url + "/api/generate", json={**GEN, "stream": True})
        await live.feed(b'{"response":"a","done":false}\n')
        assert (await resp.content.readline()).startswith(b'{"response":"a"')
        resp.close()  # the client goes away
        await eventually(lambda: live.closed)  # closing it makes Ollama stop generating
        await eventually(lambda: bool(s.records))
        assert s.records[-1].client_gone
