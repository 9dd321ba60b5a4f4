import math

import pytest

from ollama_wire.durations import (
    FOREVER,
    KeepAliveError,
    format_go_duration,
    parse_keep_alive,
)
from ollama_wire.jsonvalue import JsonValue


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(None, None, id="absent inherits"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("1.5h", 5400.0, id="fraction"),
        pytest.param("300ms", 0.3, id="milliseconds"),
        pytest.param("0", 0.0, id="string zero needs no unit"),
        pytest.param(0, 0.0, id="number zero unloads"),
        pytest.param(3600, 3600.0, id="number is seconds"),
        pytest.param(0.5, 0.5, id="float seconds"),
        pytest.param(-1, FOREVER, id="negative number is forever"),
        pytest.param("-1m", FOREVER, id="negative duration is forever"),
        pytest.param("-1s", FOREVER, id="ollama run --keepalive -1s"),
    ],
)
def test_keep_alive(value: JsonValue, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("-1", 'time: missing unit in duration "-1"', id="no unit"),
        pytest.param("3600", 'time: missing unit in duration "3600"', id="seconds as string"),
        pytest.param("5x", 'time: unknown unit "x" in duration "5x"', id="unknown unit"),
        pytest.param("", 'time: invalid duration ""', id="empty"),
        pytest.param("m", 'time: invalid duration "m"', id="unit only"),
        pytest.param(True, "Unsupported type: 'bool'", id="bool"),
        pytest.param([1], "Unsupported type: '[]interface {}'", id="list"),
    ],
)
def test_keep_alive_errors(value: JsonValue, message: str) -> None:
    with pytest.raises(KeepAliveError) as info:
        parse_keep_alive(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m0s"), (3600, "1h0m0s"), (0.3, "300ms"), (0, "0s"), (42, "42s")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


def test_forever_is_infinite() -> None:
    assert math.isinf(FOREVER)
    assert format_go_duration(FOREVER).startswith("2562047h")
