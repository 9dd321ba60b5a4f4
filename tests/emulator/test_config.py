"""Pure pieces: sizes, config loading, catalogue names, generation, wire helpers, CLI."""

# ruff: noqa: E501  (tables read best one case per line)

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from ollama_emulator import (
    FleetConfig,
    ModelSpec,
    NodeConfig,
    cli,
    default_catalogue,
    default_fleet,
    generation,
    load_config,
)
from ollama_emulator.catalogue import parse_size
from ollama_emulator.config import auto_context_length
from ollama_emulator.wire import go_json, rfc3339

GIB = 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("24GiB", 24 * GIB, id="binary unit"),
        pytest.param("2.5 GB", 2_500_000_000, id="decimal unit with space"),
        pytest.param(1000, 1000, id="plain int"),
        pytest.param("512mib", 512 * 2**20, id="case-insensitive"),
    ],
)
def test_parse_size(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12XB", "GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("vram", "ctx"),
    [
        pytest.param(8 * GIB, 4096, id="small GPU"),
        pytest.param(24 * GIB, 32768, id="24 GiB tier"),
        pytest.param(80 * GIB, 262144, id="47 GiB and up"),
    ],
)
def test_auto_context_length(vram: int, ctx: int) -> None:
    assert auto_context_length(vram) == ctx


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("llama3.2", id="bare"),
        pytest.param("llama3.2:latest", id="with tag"),
        pytest.param("library/llama3.2", id="namespaced"),
        pytest.param("registry.ollama.ai/library/LLAMA3.2:Latest", id="fully qualified, any case"),
        pytest.param("llama3.2:3b", id="alias tag"),
    ],
)
def test_catalogue_lookup_uses_ollamas_names(spelling: str) -> None:
    assert default_catalogue()[spelling].name == "llama3.2:3b"


def test_default_catalogue_and_fleet() -> None:
    catalogue = default_catalogue()
    assert 8 <= len(catalogue) <= 14
    assert catalogue["nomic-embed-text"].is_embedding
    assert len({spec.digest for spec in catalogue}) == len(catalogue)
    fleet = default_fleet()
    assert [n.host for n in fleet.nodes] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_load_config_merges_defaults_and_catalogue() -> None:
    config = load_config(
        {
            "time_scale": 0.5,
            "defaults": {"vram": "16GiB", "keep_alive": "-1", "num_parallel": 4},
            "catalogue": [{"name": "mine:7b", "size_bytes": "4GB", "load_seconds": 1}],
            "nodes": [{"name": "a", "installed": ["mine:7b"]}, {"name": "b", "keep_alive": "10m"}],
        }
    )
    a, b = config.nodes
    assert (a.vram_bytes, a.num_parallel, a.keep_alive) == (16 * GIB, 4, math.inf)
    assert b.keep_alive == 600
    assert config.catalogue["mine:7b"].size_bytes == 4_000_000_000
    assert config.catalogue.find("llama3.2") is not None and config.time_scale == 0.5


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param({"nodes": [{"name": "a", "gpus": 2}]}, "unknown node field", id="unknown field"),
        pytest.param({"nodes": [{"name": "a", "installed": ["nope"]}]}, "not in the catalogue", id="unknown model"),
        pytest.param({"nodes": [{"name": "a"}, {"name": "a"}]}, "duplicate node name", id="duplicate"),
        pytest.param({"time_scale": 0, "nodes": []}, "time_scale", id="zero time scale"),
    ],
)  # fmt: skip
def test_load_config_rejects(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(doc)


def test_model_spec_vram_and_names() -> None:
    spec = ModelSpec(name="Library/Foo", size_bytes=100, kv_bytes_per_token=2)
    assert spec.name == "Foo:latest" and spec.families == ("llama",)
    assert spec.vram_bytes(num_ctx=10, num_parallel=3) == 160


def test_generation_is_deterministic() -> None:
    seeded = generation.seed_for(42, "m", "a")
    assert seeded == generation.seed_for(42, "other", "b")
    assert generation.generate_tokens(seeded, 5) == generation.generate_tokens(seeded, 5)
    assert generation.seed_for(None, "m", "a") != generation.seed_for(None, "m", "b")
    vector = generation.embedding("d", "text", 16)
    assert vector == generation.embedding("d", "text", 16)
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        pytest.param(0, "1970-01-01T00:00:00Z", id="no fraction"),
        pytest.param(1_500_000_000, "1970-01-01T00:00:01.5Z", id="trailing zeros trimmed"),
        pytest.param(1_000_000_001, "1970-01-01T00:00:01.000000001Z", id="nanoseconds"),
    ],
)
def test_rfc3339(ns: int, text: str) -> None:
    assert rfc3339(ns) == text


def test_go_json() -> None:
    assert go_json({"a": "<&>", "b": [1, 2]}) == b'{"a":"\\u003c\\u0026\\u003e","b":[1,2]}'


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "addresses"),
    [
        pytest.param((), [("127.0.0.2", 11434), ("127.0.0.3", 11434), ("127.0.0.4", 11434)], id="built-in fleet"),
        pytest.param(("--nodes", "2", "--base-ip", "127.0.0.1", "--port", "0"), [("127.0.0.1", 0), ("127.0.0.2", 0)], id="next IP per node"),
        pytest.param(("--nodes", "3", "--base-ip", "127.0.0.1", "--same-ip", "--port", "11500"), [("127.0.0.1", 11500), ("127.0.0.1", 11501), ("127.0.0.1", 11502)], id="one IP, consecutive ports"),
        pytest.param(("--nodes", "2", "--base-ip", "127.0.0.1", "--same-ip", "--port", "0"), [("127.0.0.1", 0), ("127.0.0.1", 0)], id="one IP, free ports"),
    ],
)  # fmt: skip
def test_cli_addresses(argv: tuple[str, ...], addresses: list[tuple[str, int]]) -> None:
    config = cli.build_config(_args(*argv), {})
    assert [(n.host, n.port) for n in config.nodes] == addresses


def test_cli_flags_and_environment() -> None:
    environ = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_KEEP_ALIVE": "3600", "OLLAMA_MAX_QUEUE": "7"}
    args = _args("--num-parallel", "2", "--vram", "8GiB", "--time-scale", "0.1", "--loaded", "")
    config = cli.build_config(args, environ)
    node = config.nodes[0]
    assert (node.num_parallel, node.keep_alive, node.max_queue) == (2, 3600, 7)
    assert node.vram_bytes == 8 * GIB and config.time_scale == 0.1


def test_cli_refuses_non_loopback() -> None:
    with pytest.raises(SystemExit):
        cli.build_config(_args("--base-ip", "10.0.0.1"), {})


def test_cli_help_documents_every_knob(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="emulate")
    cli.configure(parser)
    parser.print_help()
    out = capsys.readouterr().out
    knobs = ["--time-scale", "--vram", "--num-parallel", "--max-queue", "--keep-alive"]
    knobs += ["--max-loaded-models", "--pull-bandwidth", "--config", "/-/emulator/faults"]
    for flag in knobs:
        assert flag in out


def test_node_config_is_usable_from_python() -> None:
    node = NodeConfig(name="x", installed=["llama3.2"], loaded=["llama3.2"])
    FleetConfig(nodes=[node])  # validates names against the default catalogue
