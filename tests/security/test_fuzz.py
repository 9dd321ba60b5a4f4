"""Property-based fuzzing of the parsers and of the live HTTP surface (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_balancer.core.requests import InvalidRequest, parse_request
from ollama_wire.durations import KeepAliveError, parse_keep_alive
from ollama_wire.names import InvalidModelName, parse
from tests.harness.fleet import RigFactory, nodes

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
PATHS = ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/v1/chat/completions"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
model_like = st.text(alphabet="abcAB09._-:/@ \x00%", max_size=30)


@FAST
@given(
    raw=st.binary(max_size=200), path=st.sampled_from(PATHS), pin=st.none() | st.text(max_size=10)
)
def test_parse_request_raw_bytes(raw: bytes, path: str, pin: str | None) -> None:
    try:
        req = parse_request(raw, path, pin)
    except InvalidRequest as exc:
        assert exc.message  # the pipeline answers 400 with it
        return
    assert req.key == parse(req.model).canonical


@FAST
@given(
    doc=st.dictionaries(
        st.sampled_from(["model", "name", "stream", "x"]), json_values | model_like
    ),
    path=st.sampled_from(PATHS),
)
def test_parse_request_json_objects(doc: dict[str, Any], path: str) -> None:
    try:
        req = parse_request(json.dumps(doc).encode(), path, None)
    except InvalidRequest as exc:
        assert exc.message  # the pipeline answers 400 with it
        return
    assert json.loads(req.body)  # what is forwarded is still JSON
    assert (req.model and "@" not in req.model) or req.pin is None


@FAST
@given(name=model_like | st.text(max_size=40))
def test_names_parse(name: str) -> None:
    try:
        parsed = parse(name)
    except InvalidModelName:
        return
    assert ".." not in parsed.model or parsed.model.strip(".") != ""
    assert parse(parsed.shortest).canonical == parsed.canonical
    assert "\x00" not in parsed.canonical and " " not in parsed.canonical


@FAST
@given(value=json_values | st.text(alphabet="0123456789.-+hmsun µ", max_size=12))
def test_parse_keep_alive(value: Any) -> None:
    try:
        out = parse_keep_alive(value)
    except KeepAliveError:
        return
    assert out is None or isinstance(out, float)


method = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
path = st.sampled_from(
    [
        *PATHS,
        "/",
        "/api/tags",
        "/api/ps",
        "/api/version",
        "/v1/models",
        "/v1/models/x",
        "/api/pull",
        "/api/delete",
        "/api/blobs/sha256:0",
        "/healthz",
        "/readyz",
        "/x/../api/chat",
    ]
) | st.text(alphabet="/abcdefghijklmnopqrstuvwxyz.%-_", min_size=1, max_size=20).map(
    lambda p: "/" + p
)
body = (
    st.binary(max_size=120)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda m, extra: json.dumps({"model": m, **extra}).encode(),
        model_like | st.just("llama3.2:3b"),
        st.dictionaries(
            st.sampled_from(["stream", "prompt", "messages", "keep_alive", "options"]), json_values
        ),
    )
)


async def test_http_surface_never_5xx_of_its_own(rig_factory: RigFactory) -> None:
    rig = await rig_factory(nodes(("a", ["llama3.2:3b"], ["llama3.2:3b"])), time_scale=0.001)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(m=method, p=path, b=body)
    def one(m: str, p: str, b: bytes) -> None:
        cases.append((m, p, b))

    cases: list[tuple[str, str, bytes]] = []
    one()  # hypothesis draws the cases synchronously; they are sent below
    async with aiohttp.ClientSession() as s:
        for m, p, b in cases:
            async with s.request(m, rig.url + p, data=b) as resp:
                payload = await resp.read()
            assert resp.status < 500 or resp.status in (502, 503, 504), (m, p, b, resp.status)
            known = p in PATHS  # unknown paths get gin's plain "404 page not found", as Ollama
            if known and m == "POST" and resp.status != 200:
                doc = json.loads(payload)
                assert "error" in doc, (m, p, payload)
    assert len(cases) >= 100
    assert (
        await rig.post("/api/generate", {"model": "llama3.2:3b", "prompt": "x", "stream": False})
    ).status == 200
