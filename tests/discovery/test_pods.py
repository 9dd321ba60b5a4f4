"""Tables for the pure parts of discovery: pods → backends, event folding, quantities
and DNS answers."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_balancer.core.pods import (
    PodRules,
    apply_event,
    backend_from_pod,
    backends_from_pods,
)
from ollama_balancer.discovery.dns import backends_from_addresses
from ollama_wire.backend import Backend
from ollama_wire.quantity import parse_quantity

RULES = PodRules(default_slots=2)


def pod(
    name: str = "ollama-0",
    *,
    ip: str | None = "10.0.0.5",
    ready: str | None = "True",
    ports: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    node: str | None = "gpu-1",
    deleting: bool = False,
    namespace: str = "ai",
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels if labels is not None else {"app": "ollama"},
        "annotations": annotations or {},
        "resourceVersion": "7",
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    container: dict[str, Any] = {
        "name": "ollama",
        "ports": ports if ports is not None else [{"name": "http", "containerPort": 11434}],
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    status: dict[str, Any] = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": ready},
        ]
    spec: dict[str, Any] = {"containers": containers or [container]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": status}


def backend(name: str = "ollama-0", url: str = "http://10.0.0.5:11434", **kw: Any) -> Backend:
    kw.setdefault("slots", 2)
    kw.setdefault("node", "gpu-1")
    kw.setdefault("labels", (("app", "ollama"),))
    return Backend(name=name, url=url, **kw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0", 0, id="zero"),
        pytest.param("1024", 1024, id="plain bytes"),
        pytest.param("24Gi", 24 * 2**30, id="binary suffix"),
        pytest.param("80G", 80 * 10**9, id="decimal suffix"),
        pytest.param("1.5Gi", 3 * 2**29, id="fraction with suffix"),
        pytest.param("8e9", 8 * 10**9, id="exponent"),
        pytest.param("1E", 10**18, id="E is exa, not an exponent"),
        pytest.param(" 512Mi ", 512 * 2**20, id="surrounding spaces"),
        pytest.param("1500m", 2, id="milli rounds up"),
    ],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "Gi", "24GB", "-1Gi", "1.2.3", "24 Gi", "0x10"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("pod_json", "expected"),
    [
        pytest.param(pod(), backend(), id="ready pod with ip"),
        pytest.param(pod(ready="False"), None, id="not ready"),
        pytest.param(pod(ready=None), None, id="no conditions yet"),
        pytest.param(pod(ip=None), None, id="ready but no ip"),
        pytest.param(pod(deleting=True), None, id="terminating pod gets no new requests"),
        pytest.param(
            pod(ports=[{"name": "http", "containerPort": 8080}]),
            backend(url="http://10.0.0.5:8080"),
            id="port named http",
        ),
        pytest.param(
            pod(ports=[{"name": "metrics", "containerPort": 9090}]),
            backend(url="http://10.0.0.5:11434"),
            id="no http port: default port",
        ),
        pytest.param(
            pod(ip="fd00::5"), backend(url="http://[fd00::5]:11434"), id="ipv6 is bracketed"
        ),
        pytest.param(
            pod(annotations={"ollamafleet.io/num-parallel": "4"}, env={"OLLAMA_NUM_PARALLEL": "3"}),
            backend(slots=4),
            id="annotation beats env for slots",
        ),
        pytest.param(pod(env={"OLLAMA_NUM_PARALLEL": "3"}), backend(slots=3), id="env gives slots"),
        pytest.param(
            pod(
                annotations={"ollamafleet.io/num-parallel": "many"},
                env={"OLLAMA_NUM_PARALLEL": "3"},
            ),
            backend(slots=3),
            id="invalid annotation falls through to env",
        ),
        pytest.param(
            pod(env={"OLLAMA_NUM_PARALLEL": "0"}), backend(slots=2), id="zero slots: default"
        ),
        pytest.param(
            pod(annotations={"ollamafleet.io/vram-bytes": "24Gi"}),
            backend(vram_bytes=24 * 2**30),
            id="vram quantity",
        ),
        pytest.param(
            pod(annotations={"ollamafleet.io/vram-bytes": "lots"}),
            backend(vram_bytes=0),
            id="invalid vram: unknown",
        ),
        pytest.param(pod(node=None), backend(node=""), id="not scheduled: no node"),
        pytest.param(
            pod(labels={"b": "2", "a": "1"}),
            backend(labels=(("a", "1"), ("b", "2"))),
            id="labels sorted",
        ),
        pytest.param(
            pod(
                containers=[
                    {"name": "proxy", "env": [{"name": "OLLAMA_NUM_PARALLEL", "value": "9"}]},
                    {
                        "name": "ollama",
                        "ports": [{"name": "http", "containerPort": 11434}],
                        "env": [{"name": "OLLAMA_NUM_PARALLEL", "value": "4"}],
                    },
                ]
            ),
            backend(slots=4),
            id="serving container's env wins over a sidecar's",
        ),
    ],
)
def test_backend_from_pod(pod_json: dict[str, Any], expected: Backend | None) -> None:
    assert backend_from_pod(pod_json, RULES) == expected


A = pod("a", ip="10.0.0.1")
B = pod("b", ip="10.0.0.2")
A_KEY, B_KEY = ("ai", "a"), ("ai", "b")
A_BACKEND = backend("a", "http://10.0.0.1:11434")
B_BACKEND = backend("b", "http://10.0.0.2:11434")


@pytest.mark.parametrize(
    ("before", "event", "obj", "after"),
    [
        pytest.param({}, "ADDED", A, {A_KEY: A_BACKEND}, id="added ready"),
        pytest.param({}, "ADDED", pod("a", ready="False"), {}, id="added not ready"),
        pytest.param(
            {A_KEY: A_BACKEND}, "MODIFIED", pod("a", ready="False"), {}, id="became unready"
        ),
        pytest.param(
            {A_KEY: A_BACKEND},
            "MODIFIED",
            pod("a", ip="10.0.0.9"),
            {A_KEY: backend("a", "http://10.0.0.9:11434")},
            id="ip changed",
        ),
        pytest.param({A_KEY: A_BACKEND}, "DELETED", A, {}, id="deleted"),
        pytest.param({}, "DELETED", A, {}, id="deleted unknown"),
        pytest.param(
            {A_KEY: A_BACKEND},
            "ADDED",
            B,
            {A_KEY: A_BACKEND, B_KEY: B_BACKEND},
            id="second pod",
        ),
        pytest.param({A_KEY: A_BACKEND}, "BOOKMARK", B, {A_KEY: A_BACKEND}, id="bookmark no-op"),
        pytest.param(
            {A_KEY: A_BACKEND},
            "MODIFIED",
            pod("a", ip="10.0.0.1", namespace="other"),
            {A_KEY: A_BACKEND, ("other", "a"): A_BACKEND},
            id="same name in another namespace is another pod",
        ),
    ],
)
def test_apply_event(
    before: dict[Any, Backend], event: str, obj: dict[str, Any], after: dict[Any, Backend]
) -> None:
    snapshot = dict(before)
    assert apply_event(before, event, obj, RULES) == after
    assert before == snapshot  # pure: the input is not modified


def test_backends_from_pods_keeps_only_routable() -> None:
    pods = [A, pod("c", ready="False"), B, pod("d", ip=None)]
    assert backends_from_pods(pods, RULES) == {A_KEY: A_BACKEND, B_KEY: B_BACKEND}


def test_backends_from_addresses_dedupes_and_sorts() -> None:
    got = backends_from_addresses(["10.0.0.2", "::1", "10.0.0.2", "10.0.0.1"], port=11434, slots=4)
    assert [(b.name, b.url, b.slots) for b in got] == [
        ("10.0.0.1:11434", "http://10.0.0.1:11434", 4),
        ("10.0.0.2:11434", "http://10.0.0.2:11434", 4),
        ("[::1]:11434", "http://[::1]:11434", 4),
    ]
