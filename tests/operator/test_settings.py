"""Operator settings: the log flags (the rest is in test_spec_status.py)."""

from __future__ import annotations

import pytest

from modelpool_operator.settings import OperatorSettings
from ollama_wire.logs import LogFormat


@pytest.mark.parametrize(
    ("flags", "env", "fmt", "level"),
    [
        pytest.param({}, {}, LogFormat.AUTO, "info", id="defaults"),
        pytest.param({"log_format": "json"}, {}, LogFormat.JSON, "info", id="flag"),
        pytest.param(
            {},
            {
                "OLLAMA_FLEET_OPERATOR_LOG_FORMAT": "Console",
                "OLLAMA_FLEET_OPERATOR_LOG_LEVEL": "debug",
            },
            LogFormat.CONSOLE,
            "debug",
            id="environment",
        ),
        pytest.param(
            {"log_format": "json"},
            {"OLLAMA_FLEET_OPERATOR_LOG_FORMAT": "console"},
            LogFormat.JSON,
            "info",
            id="flag over environment",
        ),
    ],
)
def test_log_settings(
    flags: dict[str, str], env: dict[str, str], fmt: LogFormat, level: str
) -> None:
    s = OperatorSettings.from_sources(flags, env)
    assert (s.process.log_format, s.process.log_level) == (fmt, level)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"OLLAMA_FLEET_OPERATOR_LOG_FORMAT": "xml"}, "log format must be one of"),
        pytest.param({"OLLAMA_FLEET_OPERATOR_LOG_LEVEL": "loud"}, "log level must be one of"),
    ],
)
def test_bad_log_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings.from_sources({}, env)


@pytest.mark.parametrize(
    ("flags", "env", "ref", "urls"),
    [
        pytest.param({}, {}, None, (), id="off by default"),
        pytest.param(
            {"balancer_service": "ops/fleet-balancer-ops"},
            {},
            ("ops", "fleet-balancer-ops"),
            (),
            id="namespace/name",
        ),
        pytest.param(
            {"balancer_service": "bal", "namespaces": ("ml",)},
            {},
            ("ml", "bal"),
            (),
            id="name alone: the operator's namespace",
        ),
        pytest.param(
            {},
            {"OLLAMA_FLEET_OPERATOR_BALANCER_URLS": "http://a:9090, http://b:9090"},
            None,
            ("http://a:9090", "http://b:9090"),
            id="urls from the environment",
        ),
    ],
)
def test_balancer_settings(
    flags: dict[str, object],
    env: dict[str, str],
    ref: tuple[str, str] | None,
    urls: tuple[str, ...],
) -> None:
    s = OperatorSettings.from_sources(flags, env)
    assert s.balancer_ref == ref
    assert s.demand.balancer_urls == urls


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param({"balancer_service": "a/b/c"}, "NAMESPACE/NAME or NAME", id="three parts"),
        pytest.param({"balancer_service": "/b"}, "NAMESPACE/NAME or NAME", id="empty namespace"),
        pytest.param({"demand_window_seconds": 0.0}, "window must be > 0", id="window"),
        pytest.param({"release_keep_alive_seconds": 0.0}, "0 would unload", id="release 0"),
    ],
)
def test_bad_balancer_settings(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings.from_sources(flags, {})
