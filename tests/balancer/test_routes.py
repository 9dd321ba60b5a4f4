"""The route table: one answer per path to every question the pipeline asks."""

from __future__ import annotations

import pytest

from ollama_balancer.app import OPS_PATHS
from ollama_balancer.core.routes import ROUTES, Kind, spec_for


@pytest.mark.parametrize(
    ("path", "kind", "model_body", "quota", "affinity", "needs_key"),
    [
        pytest.param("/api/chat", Kind.INFERENCE, True, True, True, True, id="chat"),
        pytest.param("/api/embed", Kind.INFERENCE, True, True, False, True, id="embed"),
        pytest.param("/api/show", Kind.INFERENCE, True, False, False, True, id="show: no quota"),
        pytest.param("/v1/responses", Kind.INFERENCE, True, True, True, True, id="responses"),
        pytest.param("/api/tags", Kind.LISTING, False, False, False, True, id="tags"),
        pytest.param("/v1/models/llama3:8b", Kind.LISTING, False, False, False, True, id="model"),
        pytest.param("/api/pull", Kind.ADMIN, True, False, False, True, id="pull"),
        pytest.param("/api/blobs/sha256:ab", Kind.ADMIN, False, False, False, True, id="blob"),
        pytest.param("/", Kind.OPS, False, False, False, False, id="root"),
        pytest.param("/metrics", Kind.OPS, False, False, False, False, id="metrics"),
        pytest.param("/-/fleet", Kind.OPS, False, False, False, False, id="fleet view"),
    ],
)
def test_spec_for(
    path: str, kind: Kind, model_body: bool, quota: bool, affinity: bool, needs_key: bool
) -> None:
    spec = spec_for(path)
    assert spec is not None
    assert (spec.kind, spec.model_body, spec.quota, spec.affinity, spec.needs_key) == (
        kind,
        model_body,
        quota,
        affinity,
        needs_key,
    )


@pytest.mark.parametrize(
    "path", ["/nope", "/api/blobs/", "/api/blobs/a/b", "/v1/models/", "/api/chat/x", "/-/other"]
)
def test_unknown_paths(path: str) -> None:
    assert spec_for(path) is None


def test_every_path_once_and_ops_port_paths_from_the_table() -> None:
    paths = [r.path for r in ROUTES]
    assert len(paths) == len(set(paths))
    assert set(OPS_PATHS) == {"/healthz", "/readyz", "/metrics", "/-/fleet", "/-/dashboard"}
