"""One pod → endpoint reading (``ollama_wire.pods``) for the balancer and the operator."""

from __future__ import annotations

from typing import Any

import pytest

from modelpool_operator.observe import pod_info
from ollama_balancer.core.pods import PodRules, backend_from_pod
from ollama_wire.pods import pod_endpoint, pod_port, pod_vram_bytes


def pod(
    *,
    ip: str | None = "10.0.0.5",
    ready: str | None = "True",
    ports: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
    phase: str = "Running",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "ollama-0", "namespace": "ai", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    container = {"name": "ollama", "ports": ports or []}
    return {"metadata": meta, "spec": {"containers": [container]}, "status": status}


HTTP_8000 = [{"name": "http", "containerPort": 8000}]
PORT_9000 = {"ollamafleet.io/port": "9000"}


@pytest.mark.parametrize(
    ("body", "url"),
    [
        pytest.param(pod(), "http://10.0.0.5:11434", id="no port anywhere: 11434"),
        pytest.param(pod(ports=HTTP_8000), "http://10.0.0.5:8000", id="named port http"),
        pytest.param(pod(annotations=PORT_9000), "http://10.0.0.5:9000", id="annotation"),
        pytest.param(
            pod(ports=HTTP_8000, annotations=PORT_9000),
            "http://10.0.0.5:8000",
            id="named port beats annotation",
        ),
        pytest.param(
            pod(ports=[{"name": "metrics", "containerPort": 9100}], annotations=PORT_9000),
            "http://10.0.0.5:9000",
            id="other port names ignored",
        ),
        pytest.param(
            pod(annotations={"ollamafleet.io/port": "eleven"}),
            "http://10.0.0.5:11434",
            id="malformed annotation falls through",
        ),
        pytest.param(
            pod(annotations={"ollamafleet.io/port": "70000"}),
            "http://10.0.0.5:11434",
            id="annotation out of range falls through",
        ),
        pytest.param(pod(ip="fd00::5"), "http://[fd00::5]:11434", id="ipv6 bracketed"),
        pytest.param(pod(ready="False"), None, id="not Ready"),
        pytest.param(pod(ready=None), None, id="no conditions yet"),
        pytest.param(pod(ip=None), None, id="no IP"),
        pytest.param(pod(deleting=True), None, id="being deleted"),
        pytest.param({}, None, id="empty object"),
    ],
)
def test_pod_endpoint(body: dict[str, Any], url: str | None) -> None:
    assert pod_endpoint(body) == url


def test_pod_port_default_is_a_parameter() -> None:
    assert pod_port(pod(), default_port=8080) == 8080
    assert pod_port(pod(annotations=PORT_9000), default_port=8080) == 9000
    assert pod_port(pod(ports=[{"name": "api", "containerPort": 1}]), port_name="api") == 1


@pytest.mark.parametrize(
    ("annotations", "vram"),
    [
        pytest.param({}, None, id="absent"),
        pytest.param({"ollamafleet.io/vram-bytes": "24Gi"}, 24 * 2**30, id="quantity"),
        pytest.param({"ollamafleet.io/vram-bytes": "lots"}, None, id="typo"),
    ],
)
def test_pod_vram_bytes(annotations: dict[str, str], vram: int | None) -> None:
    assert pod_vram_bytes(pod(annotations=annotations)) == vram


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(pod(annotations=PORT_9000), id="annotated port"),
        pytest.param(pod(ports=HTTP_8000, annotations=PORT_9000), id="named port and annotation"),
        pytest.param(pod(ip="fd00::5", annotations=PORT_9000), id="ipv6, annotated"),
        pytest.param(pod(annotations=PORT_9000, ready="False"), id="not ready: neither"),
    ],
)
def test_balancer_and_operator_reach_a_pod_on_one_url(body: dict[str, Any]) -> None:
    """#11: the balancer's discovery and the operator's observation agree on every pod."""
    backend = backend_from_pod(body, PodRules())
    info = pod_info(body)
    assert (backend.url if backend else None) == info.endpoint == pod_endpoint(body)
