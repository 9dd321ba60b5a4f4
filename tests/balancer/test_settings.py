"""Settings: one table, read from defaults < YAML < environment < flags."""

from __future__ import annotations

import argparse

import pytest

from ollama_balancer.settings import SettingsError, add_arguments, load_settings

GI = 2**30


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_precedence_flags_over_env_over_yaml() -> None:
    yaml_text = "poll_interval: 1\naffinity: false\nmax_attempts: 5\nbackends: [http://a:1]\n"
    env = {"OLLAMA_FLEET_POLL_INTERVAL": "3", "OLLAMA_FLEET_MAX_ATTEMPTS": "4"}
    s = load_settings(flags("--poll-interval", "7"), env, yaml_text)
    assert s.polling.interval == 7.0  # flag
    assert s.proxy.max_attempts == 4  # env over YAML
    assert s.routing.affinity is False  # YAML over default
    assert s.proxy.first_byte_timeout == 300.0  # default


@pytest.mark.parametrize(
    ("item", "name", "url", "slots", "vram"),
    [
        pytest.param(
            "127.0.0.2:11434", "127.0.0.2:11434", "http://127.0.0.2:11434", 1, 0, id="bare address"
        ),
        pytest.param(
            "gpu-0=http://10.0.0.7:11434/",
            "gpu-0",
            "http://10.0.0.7:11434",
            1,
            0,
            id="named, trailing slash",
        ),
        pytest.param(
            "gpu-0=h:1;slots=4;vram=24Gi", "gpu-0", "http://h:1", 4, 24 * GI, id="slots and VRAM"
        ),
        pytest.param(
            "gpu-0=h:1;vram=16GiB",
            "gpu-0",
            "http://h:1",
            1,
            16 * GI,
            id="VRAM written as people do",
        ),
    ],
)
def test_static_backends(item: str, name: str, url: str, slots: int, vram: int) -> None:
    (backend,) = load_settings(None, {"OLLAMA_FLEET_BACKENDS": item}).discovery.static_backends()
    assert (backend.name, backend.url, backend.slots, backend.vram_bytes) == (
        name,
        url,
        slots,
        vram,
    )


def test_yaml_backend_mappings() -> None:
    s = load_settings(
        None, {}, "backends:\n  - {name: a, url: 'h:1', slots: 2, vram: 8Gi}\n  - http://b:2\n"
    )
    a, b = s.discovery.static_backends()
    assert (a.name, a.slots, a.vram_bytes) == ("a", 2, 8 * GI)
    assert b.name == "b:2"


@pytest.mark.parametrize(
    ("env", "yaml_text", "message"),
    [
        pytest.param(
            {"OLLAMA_FLEET_BACKENDS": "a=h;vram=lots"}, None, "vram: not a quantity", id="bad VRAM"
        ),
        pytest.param(
            {"OLLAMA_FLEET_BACKENDS": "a=h;slots=0"}, None, "slots: must be >= 1", id="zero slots"
        ),
        pytest.param(
            {"OLLAMA_FLEET_BACKENDS": "a=h;colour=red"}, None, "unknown option", id="unknown option"
        ),
        pytest.param(
            {"OLLAMA_FLEET_BACKENDS": "a=h:1,a=h:2"},
            None,
            "duplicate backend names",
            id="duplicate names",
        ),
        pytest.param(
            {"OLLAMA_FLEET_POLL_INTERVAL": "soon"},
            None,
            "OLLAMA_FLEET_POLL_INTERVAL",
            id="not a number",
        ),
        pytest.param(
            {"OLLAMA_FLEET_AFFINITY": "perhaps"}, None, "not a boolean", id="not a boolean"
        ),
        pytest.param({}, "nonsense_key: 1\n", "unknown setting 'nonsense_key'", id="unknown key"),
        pytest.param({}, "- a\n- b\n", "must be a mapping", id="YAML list"),
        pytest.param(
            {"OLLAMA_FLEET_DISCOVERY": "dns"}, None, "dns_name: required", id="dns without a name"
        ),
        pytest.param(
            {"OLLAMA_FLEET_ADMIN": "open"}, None, "admin: must be one of", id="bad choice"
        ),
    ],
)
def test_errors_name_the_setting(env: dict[str, str], yaml_text: str | None, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, env, yaml_text)
