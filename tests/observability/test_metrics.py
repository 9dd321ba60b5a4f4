"""/metrics after real requests through the balancer in front of emulated Ollama nodes."""

from __future__ import annotations

import asyncio
import json
import platform
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from ollama_balancer.core.auth import hash_key
from ollama_balancer.core.fleet import BackendState, FleetSnapshot
from ollama_balancer.metrics import OTHER
from ollama_balancer.observability import model_label, slot_wait_seconds
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel
from ollama_wire.names import canonical
from tests.harness.eventually import eventually
from tests.harness.fleet import RigFactory, node
from tests.harness.scrape import Scrape

LLAMA = "llama3.2:latest"
QWEN = "qwen2.5:7b"


async def test_request_counters_histograms_and_fleet_gauges(rig_factory: RigFactory) -> None:
    rig = await rig_factory(
        [node("a", [LLAMA, QWEN], [LLAMA]), node("b", [LLAMA])], poll_interval=30
    )
    tokens = 0
    prompt_tokens = 0
    for _ in range(3):
        status, lines = await rig.generate("llama3.2")
        assert status == 200 and lines[-1]["done"]
        tokens += lines[-1]["eval_count"]
        prompt_tokens += lines[-1]["prompt_eval_count"]
    status, lines = await rig.generate(QWEN, stream=False)
    assert status == 200
    qwen_tokens = lines[0]["eval_count"]
    assert (await rig.generate("nope-model"))[0] == 404
    assert (await rig.generate("Bad Name!!"))[0] == 400
    await rig.poll()  # qwen is resident on a now
    m = await rig.scrape()

    requests = m.series("ollama_fleet_requests_total")
    assert {dict(k)["model"] for k in requests} == {LLAMA, QWEN, OTHER}
    assert (
        m.get(
            "ollama_fleet_requests_total", model=LLAMA, backend="a", status="200", reason="resident"
        )
        == 3
    )
    assert (
        m.get(
            "ollama_fleet_requests_total", model=QWEN, backend="a", status="200", reason="cold-load"
        )
        == 1
    )
    assert (
        m.get(
            "ollama_fleet_requests_total", model=OTHER, backend="none", status="404", reason="none"
        )
        == 1
    )
    assert (
        m.get(
            "ollama_fleet_requests_total", model=OTHER, backend="none", status="400", reason="none"
        )
        == 1
    )
    assert sum(requests.values()) == 6
    # The exposition text itself, as a scraper reads it.
    assert (
        'ollama_fleet_requests_total{backend="a",model="llama3.2:latest",'
        'reason="resident",status="200"} 3.0\n'
    ) in m.text
    assert "nope-model" not in m.text and "Bad Name" not in m.text
    for line in (
        "# TYPE ollama_fleet_requests_total counter",
        "# TYPE ollama_fleet_request_duration_seconds histogram",
        "# TYPE ollama_fleet_inflight_requests gauge",
    ):
        assert line + "\n" in m.text

    a_llama = {"model": LLAMA, "backend": "a"}
    assert m.get("ollama_fleet_request_duration_seconds_count", **a_llama) == 3
    assert m.get("ollama_fleet_time_to_first_byte_seconds_count", **a_llama) == 3
    assert m.get("ollama_fleet_generated_tokens_total", **a_llama) == tokens
    assert m.get("ollama_fleet_prompt_tokens_total", **a_llama) == prompt_tokens
    assert m.get("ollama_fleet_generated_tokens_total", model=QWEN, backend="a") == qwen_tokens
    assert m.get("ollama_fleet_time_per_output_token_seconds_count", **a_llama) == 3
    per_token = m.get("ollama_fleet_time_per_output_token_seconds_sum", **a_llama)
    assert per_token is not None and 0 < per_token / 3 < 1  # seconds per token, not tokens/s
    # every request, refusals included, per API key (none here: authentication is off)
    assert m.series("ollama_fleet_client_requests_total") == {
        frozenset({("client", "anonymous"), ("status", "200")}): 4.0,
        frozenset({("client", "anonymous"), ("status", "404")}): 1.0,
        frozenset({("client", "anonymous"), ("status", "400")}): 1.0,
    }
    assert m.get("ollama_fleet_slot_wait_seconds_count", **a_llama) == 3
    assert m.get("ollama_fleet_cold_loads_total", model=QWEN, backend="a") == 1
    assert m.get("ollama_fleet_cold_loads_total", **a_llama) is None
    assert m.get("ollama_fleet_cold_load_duration_seconds_count", model=QWEN, backend="a") == 1
    assert m.series("ollama_fleet_retries_total") == {}
    assert m.series("ollama_fleet_penalties_total") == {}

    # State, read from the ledger and snapshot at scrape time.
    assert m.series("ollama_fleet_backend_up") == {
        frozenset({("backend", "a")}): 1.0,
        frozenset({("backend", "b")}): 1.0,
    }
    assert m.get("ollama_fleet_model_resident", model=LLAMA, backend="a") == 1
    assert m.get("ollama_fleet_model_resident", model=QWEN, backend="a") == 1
    assert m.get("ollama_fleet_model_resident", model=LLAMA, backend="b") == 0
    assert m.get("ollama_fleet_model_vram_bytes", model=QWEN, backend="a") > 0  # type: ignore[operator]
    assert set(m.series("ollama_fleet_inflight_requests").values()) == {0.0}
    assert set(m.series("ollama_fleet_loads_in_progress").values()) == {0.0}
    assert m.series("ollama_fleet_model_routable_backends") == {
        frozenset({("model", LLAMA)}): 2.0,
        frozenset({("model", QWEN)}): 1.0,
    }
    assert m.get("ollama_fleet_draining") == 0
    # Polls and fleet changes.
    poller = rig.bal.poller
    assert poller is not None and poller.rounds >= 2
    for pod in ("a", "b"):
        assert m.get("ollama_fleet_poll_duration_seconds_count", backend=pod) == poller.rounds
    assert m.series("ollama_fleet_poll_errors_total") == {}
    assert m.get("ollama_fleet_backend_changes_total", kind="joined") == 2
    assert m.get("ollama_fleet_backend_changes_total", kind="up") == 2
    assert m.get("ollama_fleet_backend_changes_total", kind="loaded") == 2  # llama, then qwen


async def test_inflight_gauge_follows_a_live_stream_and_a_client_that_leaves(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory([node("a", [LLAMA], [LLAMA])])
    rig.node("a").faults.slow(2000)  # one token every ~0.4 s
    resp = await rig.session.post(rig.url + "/api/generate", json={"model": LLAMA, "prompt": "x"})
    try:
        assert resp.status == 200
        m = await rig.scrape()
        assert m.get("ollama_fleet_inflight_requests", model=LLAMA, backend="a") == 1
        fleet = await rig.fleet_json()
        assert fleet["inflight"] == 1
        assert fleet["pods"][0]["models"][0]["inflight"] == 1
    finally:
        resp.close()  # the client goes away mid-stream
    stats = rig.node("a").stats
    await eventually(lambda: stats.generations_cancelled == 1)

    async def settled() -> Scrape:
        while True:
            m = await rig.scrape()
            if (
                m.get(
                    "ollama_fleet_requests_total",
                    model=LLAMA,
                    backend="a",
                    status="499",
                    reason="resident",
                )
                == 1
            ):
                return m
            await asyncio.sleep(0.02)

    async with asyncio.timeout(10):
        m = await settled()
    assert m.get("ollama_fleet_inflight_requests", model=LLAMA, backend="a") == 0


async def test_loads_in_progress_gauge_during_a_cold_load(rig_factory: RigFactory) -> None:
    # qwen2.5:7b takes several emulated seconds to load: ~0.5 s of real time at 0.1.
    rig = await rig_factory([node("a", [QWEN])], time_scale=0.1, poll_interval=30)
    task = asyncio.create_task(rig.generate(QWEN, stream=False))
    seen: list[dict[str, Any]] = []

    async def loading() -> None:
        while True:
            m = await rig.scrape()
            if m.get("ollama_fleet_loads_in_progress", model=QWEN, backend="a") == 1:
                seen.append(await rig.fleet_json())
                return
            await asyncio.sleep(0.01)

    async with asyncio.timeout(10):
        await loading()
    assert seen[0]["loading"][0]["pod"] == "a" and seen[0]["loading"][0]["model"] == QWEN
    assert seen[0]["pods"][0]["models"][0]["state"] == "loading"
    status, _ = await task
    assert status == 200
    m = await rig.scrape()
    assert m.get("ollama_fleet_loads_in_progress", model=QWEN, backend="a") == 0
    assert m.get("ollama_fleet_cold_loads_total", model=QWEN, backend="a") == 1
    load = m.get("ollama_fleet_cold_load_duration_seconds_sum", model=QWEN, backend="a")
    assert load is not None and load > 0.2


async def test_failover_counts_retries_failures_penalties_and_a_pod_going_down(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(
        [node("a", [LLAMA], [LLAMA]), node("b", [LLAMA], [LLAMA])], poll_interval=30
    )
    # The poller's own first round (it starts with one) must not land after the stop below.
    poller = rig.bal.poller
    assert poller is not None
    async with asyncio.timeout(10):
        while poller.rounds < 2:
            await asyncio.sleep(0.01)
    await rig.node("a").stop_listening()  # refused: a fast failure, still routable until polled
    sent = 0
    async with asyncio.timeout(20):
        while not rig.bal.ledger.occupancy().penalised("a", rig.bal.clock()):
            status, _ = await rig.generate(LLAMA)
            assert status == 200
            sent += 1
    m = await rig.scrape()
    assert m.get("ollama_fleet_retries_total", model=LLAMA) == 1
    assert m.get("ollama_fleet_attempt_failures_total", backend="a") == 1
    assert m.get("ollama_fleet_penalties_total", backend="a") == 1
    assert m.get("ollama_fleet_backend_penalised", backend="a") == 1
    assert m.get("ollama_fleet_backend_penalised", backend="b") == 0
    assert (
        m.get(
            "ollama_fleet_requests_total", model=LLAMA, backend="b", status="200", reason="resident"
        )
        == sent
    )
    for _ in range(3):
        await rig.poll()
    m = await rig.scrape()
    assert m.get("ollama_fleet_backend_up", backend="a") == 0
    assert m.get("ollama_fleet_backend_up", backend="b") == 1
    assert m.get("ollama_fleet_model_routable_backends", model=LLAMA) == 1  # b only
    assert m.get("ollama_fleet_poll_errors_total", backend="a") == 3
    assert m.get("ollama_fleet_backend_changes_total", kind="down") == 1
    fleet = await rig.fleet_json()
    a = fleet["pods"][0]
    assert (a["status"], a["routable"], a["failures"]) == ("down", False, 3)
    assert a["last_error"] and fleet["penalties"]["a"] > 0


def _snapshot(*models: str) -> FleetSnapshot:
    installed = {canonical(m): InstalledModel(m, 1, "d") for m in models}
    return FleetSnapshot(
        backends=(BackendState(backend=Backend("a", "http://a"), installed=installed),)
    )


@pytest.mark.parametrize(
    ("name", "label"),
    [
        pytest.param("llama3.2", LLAMA, id="known, short form"),
        pytest.param("LLAMA3.2:latest", LLAMA, id="known, other case"),
        pytest.param("registry.ollama.ai/library/llama3.2", LLAMA, id="known, fully qualified"),
        pytest.param("mistral", OTHER, id="valid but nowhere in the fleet"),
        pytest.param("../../etc/passwd", OTHER, id="invalid name"),
        pytest.param("x" * 5000, OTHER, id="huge name"),
        pytest.param("", OTHER, id="no model (unparsable body)"),
    ],
)
def test_model_label_is_bounded_by_the_fleet(name: str, label: str) -> None:
    assert model_label(_snapshot(LLAMA), name) == label


@pytest.mark.parametrize(
    ("final", "wait"),
    [
        pytest.param(
            {
                "total_duration": 3_000_000_000,
                "load_duration": 500_000_000,
                "prompt_eval_duration": 250_000_000,
                "eval_duration": 1_000_000_000,
            },
            1.25,
            id="total - load - prompt - eval",
        ),
        pytest.param(
            {"total_duration": 2_000_000_000, "eval_duration": 1_500_000_000},
            0.5,
            id="prompt fully cached: field omitted",
        ),
        pytest.param(
            {"total_duration": 100, "load_duration": 200, "eval_duration": 10}, 0.0, id="clamped"
        ),
        pytest.param(
            {"total_duration": 10, "load_duration": 5, "prompt_eval_count": 3},
            None,
            id="/api/embed: no eval timings",
        ),
        pytest.param({}, None, id="/v1 or non-generation answer"),
    ],
)
def test_slot_wait_from_ollama_timings(final: dict[str, Any], wait: float | None) -> None:
    assert slot_wait_seconds(final) == (pytest.approx(wait) if wait is not None else None)


def test_metric_names_follow_prometheus_conventions() -> None:
    from ollama_balancer import metrics

    names = [v for k, v in vars(metrics).items() if k.isupper() and str(v).startswith("ollama_")]
    assert len(names) == len(set(names)) >= 20
    for name in names:
        assert name.startswith("ollama_fleet_"), name
        assert name == name.lower() and " " not in name
        assert not name.endswith(("_ms", "_milliseconds", "_count", "_sum", "_bucket")), name
        # no stuttering, base units only (seconds and bytes, never rates or milli-anything)
        assert "fleet_fleet" not in name and "_per_second" not in name, name
    assert json.dumps(sorted(names))  # all plain strings


async def test_build_info_process_and_platform_collectors(rig_factory: RigFactory) -> None:
    from ollama_balancer.metrics import package_version

    rig = await rig_factory([node("a", [LLAMA], [LLAMA])], poll_interval=30)
    m = await rig.scrape()
    ((info_labels, value),) = m.series("ollama_fleet_build_info").items()
    info = dict(info_labels)
    assert value == 1
    assert info["version"] == package_version() != "unknown"
    assert info["python_version"] == platform.python_version()
    assert m.get("process_resident_memory_bytes") > 0  # type: ignore[operator]
    assert m.get("process_cpu_seconds_total") is not None
    assert m.series("python_info")
    assert m.series("python_gc_collections_total")


async def test_openmetrics_and_gzip_are_negotiated(rig_factory: RigFactory) -> None:
    rig = await rig_factory([node("a", [LLAMA], [LLAMA])], poll_interval=30)
    assert (await rig.generate(LLAMA))[0] == 200
    await asyncio.sleep(0.05)  # the record is observed one loop tick after the answer
    headers = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    async with rig.session.get(rig.url + "/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = await resp.text()  # aiohttp's client inflates it
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["ollama_fleet_build"].type == "info"
    requests = families["ollama_fleet_requests"]
    assert requests.type == "counter"
    assert [s.value for s in requests.samples if s.name.endswith("_total")] == [1.0]
    # without the header: the classic text format, uncompressed
    async with rig.session.get(rig.url + "/metrics", headers={"Accept-Encoding": ""}) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "Content-Encoding" not in resp.headers


async def test_client_requests_count_every_answer_per_key(
    rig_factory: RigFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys:\n  - {{name: team-a, key_sha256: {hash_key('key-a')}}}\n"
        f"  - {{name: team-b, key_sha256: {hash_key('key-b')}}}\n"
    )
    rig = await rig_factory([node("a", [LLAMA], [LLAMA])], poll_interval=30, auth_file=str(keys))
    for key, n in (("key-a", 2), ("key-b", 1)):
        for _ in range(n):
            async with rig.session.post(
                rig.url + "/api/generate",
                json={"model": LLAMA, "prompt": "x", "stream": False},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status == 200
    async with rig.session.post(
        rig.url + "/api/generate",
        json={"model": "nope", "prompt": "x"},
        headers={"Authorization": "Bearer key-b"},
    ) as resp:
        assert resp.status == 404

    async def counted() -> Scrape:
        while True:
            m = await rig.scrape()
            if sum(m.series("ollama_fleet_client_requests_total").values()) == 4:
                return m
            await asyncio.sleep(0.02)

    async with asyncio.timeout(10):
        m = await counted()
    assert m.series("ollama_fleet_client_requests_total") == {
        frozenset({("client", "team-a"), ("status", "200")}): 2.0,
        frozenset({("client", "team-b"), ("status", "200")}): 1.0,
        frozenset({("client", "team-b"), ("status", "404")}): 1.0,
    }
    assert "key-a" not in m.text and "key-b" not in m.text  # names, never keys
