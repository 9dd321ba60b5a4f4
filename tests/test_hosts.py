"""One parser for where an Ollama server listens: addresses as OLLAMA_HOST reads them, and
the static backend list (``--backends``), as the balancer's settings and CLI use it."""

from __future__ import annotations

import pytest

from ollama_balancer.settings import load_settings
from ollama_fleet.cli import build_parser
from ollama_wire.backend import Backend
from ollama_wire.hosts import base_url, endpoint_url, host_port, parse_backends

GI = 2**30


@pytest.mark.parametrize(
    ("address", "url"),
    [
        pytest.param("10.0.0.1", "http://10.0.0.1:11434", id="bare host: http and 11434"),
        pytest.param("gpu-a:8080", "http://gpu-a:8080", id="bare host:port: http"),
        pytest.param("[::1]", "http://[::1]:11434", id="bracketed ipv6"),
        pytest.param("fe80::1", "http://[fe80::1]:11434", id="bare ipv6 literal"),
        pytest.param("http://10.0.0.1:11434/", "http://10.0.0.1:11434", id="url, slash dropped"),
        pytest.param("http://h", "http://h", id="url without port means port 80"),
        pytest.param("https://ollama.example", "https://ollama.example", id="https url"),
        pytest.param("http://x:1/?a=b", "http://x:1/?a=b", id="url with a query"),
        pytest.param(" h:1 ", "http://h:1", id="spaces"),
    ],
)
def test_base_url(address: str, url: str) -> None:
    assert base_url(address) == url


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param("http://", "no host", id="no host"),
        pytest.param("", "no host", id="empty"),
        pytest.param("h:", "empty port", id="empty port"),
        pytest.param("h:abc", "port is not a number", id="port not a number"),
        pytest.param("ftp://h", "scheme must be http or https", id="other scheme"),
    ],
)
def test_base_url_rejects(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        base_url(address)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        pytest.param("http://h:1", "h:1", id="explicit port"),
        pytest.param("http://h", "h:80", id="http default"),
        pytest.param("https://h/x", "h:443", id="https default, path ignored"),
        pytest.param("http://[::1]:11434", "[::1]:11434", id="ipv6"),
    ],
)
def test_host_port(url: str, name: str) -> None:
    assert host_port(url) == name


def test_endpoint_url_brackets_ipv6() -> None:
    assert endpoint_url("10.1.2.3", 8080) == "http://10.1.2.3:8080"
    assert endpoint_url("fd00::5", 11434, "https") == "https://[fd00::5]:11434"


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param(
            ["http://10.0.0.1:11434"],
            [Backend("10.0.0.1:11434", "http://10.0.0.1:11434")],
            id="url",
        ),
        pytest.param(
            ["gpu-a=http://10.0.0.1:11434/"],
            [Backend("gpu-a", "http://10.0.0.1:11434")],
            id="name=url, trailing slash dropped",
        ),
        pytest.param(
            ["10.0.0.1"], [Backend("10.0.0.1:11434", "http://10.0.0.1:11434")], id="bare host"
        ),
        pytest.param(
            ["a=10.0.0.1"], [Backend("a", "http://10.0.0.1:11434")], id="name=bare host (#11)"
        ),
        pytest.param(
            ["a=10.0.0.1:8080, b=https://ollama.example:443"],
            [
                Backend("a", "http://10.0.0.1:8080"),
                Backend("b", "https://ollama.example:443"),
            ],
            id="comma-separated",
        ),
        pytest.param(["[::1]"], [Backend("[::1]:11434", "http://[::1]:11434")], id="ipv6 bare"),
        pytest.param(
            ["http://x:1/?a=b"],
            [Backend("x:1", "http://x:1/?a=b")],
            id="= inside a url is not a name",
        ),
        pytest.param(
            ["g=h:1;slots=4;vram=24Gi"],
            [Backend("g", "http://h:1", slots=4, vram_bytes=24 * GI)],
            id="slots and VRAM",
        ),
        pytest.param(
            ["g=h;vram=16GiB", "k=h:2;vram=2K"],
            [
                Backend("g", "http://h:11434", vram_bytes=16 * GI),
                Backend("k", "http://h:2", vram_bytes=2000),
            ],
            id="VRAM written as people do",
        ),
    ],
)
def test_parse_backends(specs: list[str], expected: list[Backend]) -> None:
    assert parse_backends(specs) == expected


def test_parse_backends_default_slots() -> None:
    (a, b) = parse_backends(["a=h:1", "b=h:2;slots=2"], default_slots=3)
    assert (a.slots, b.slots) == (3, 2)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        pytest.param(["a=http://x:1", "a=http://y:1"], "duplicate backend names: a", id="dup"),
        pytest.param(["http://x:1", "x:1"], "duplicate backend names: x:1", id="dup default"),
        pytest.param(["http://"], "no host", id="no host"),
        pytest.param(["a=h;slots=0"], "slots: must be >= 1", id="zero slots"),
        pytest.param(["a=h;vram=lots"], "vram: not a quantity", id="bad VRAM"),
        pytest.param(["a=h;colour=red"], "unknown option", id="unknown option"),
    ],
)
def test_parse_backends_rejects(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_backends(specs)


def test_cli_backends_bare_host_reaches_ollama_port() -> None:
    """``ollama-fleet balancer --backends a=10.0.0.1`` (#11): port 11434, not 80.

    Parsed only: no traffic leaves loopback."""
    args = build_parser().parse_args(["balancer", "--backends", "a=10.0.0.1"])
    (backend,) = load_settings(args, {}).discovery.static_backends()
    assert (backend.name, backend.url) == ("a", "http://10.0.0.1:11434")
