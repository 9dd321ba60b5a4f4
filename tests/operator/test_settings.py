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
    assert (s.log_format, s.log_level) == (fmt, level)


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
