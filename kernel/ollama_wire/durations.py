"""Go duration strings and Ollama's ``keep_alive`` semantics (pure).

``keep_alive`` (docs/ollama.md §4.1): a JSON number is seconds (negative =
forever); a string is parsed by Go's ``time.ParseDuration`` (negative = forever,
no unit other than for ``"0"`` is an error); absent/null means "inherit".
"""

from __future__ import annotations

import math
import re

from .jsonvalue import JsonValue

__all__ = [
    "FOREVER",
    "KeepAliveError",
    "format_go_duration",
    "parse_go_duration",
    "parse_keep_alive",
]

#: Forever, as Ollama stores it (MaxInt64 ns, about 292 years) but kept as infinity here.
FOREVER = math.inf

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_COMPONENT = re.compile(r"(\d*\.?\d*)([^\d.]*)")


class KeepAliveError(ValueError):
    """Not a valid duration; ``str()`` is the exact message Go/Ollama returns."""


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string to seconds, with Go's error messages."""
    orig = text
    quoted = '"' + orig + '"'
    if text == "":
        raise KeepAliveError(f"time: invalid duration {quoted}")
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if text == "":
        raise KeepAliveError(f"time: invalid duration {quoted}")
    total = 0.0
    while text:
        match = _COMPONENT.match(text)
        number, unit = (match.group(1), match.group(2)) if match else ("", "")
        if number in ("", "."):
            raise KeepAliveError(f"time: invalid duration {quoted}")
        if unit == "":
            raise KeepAliveError(f"time: missing unit in duration {quoted}")
        # the unit runs until the next digit or dot
        if unit not in _UNITS:
            raise KeepAliveError(f'time: unknown unit "{unit}" in duration {quoted}')
        total += float(number) * _UNITS[unit]
        text = text[len(number) + len(unit) :]
    return sign * total


def parse_keep_alive(value: JsonValue) -> float | None:
    """Seconds to keep a model loaded after it goes idle.

    Returns None for "not given" (inherit the runner's value or the server
    default), :data:`FOREVER` for any negative value, else seconds >= 0.
    Raises :class:`KeepAliveError` with Ollama's message for bad input.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise KeepAliveError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        seconds = parse_go_duration(value)
        return FOREVER if seconds < 0 else seconds
    go_names: dict[type, str] = {list: "[]interface {}", dict: "map[string]interface {}"}
    type_name = go_names.get(type(value), type(value).__name__)
    raise KeepAliveError(f"Unsupported type: '{type_name}'")


def format_go_duration(seconds: float) -> str:
    """Render seconds the way Go prints a Duration (``5m0s``, ``1h0m0s``, ``300ms``)."""
    if math.isinf(seconds):
        return "2562047h47m16.854775807s"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{secs:g}s"
