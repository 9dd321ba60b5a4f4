"""A setting's value from what a source holds: the text of a variable or a flag, or a
value already typed (a YAML document, a test's keyword).  Pure.

Errors name the source (``OLLAMA_FLEET_POLL_INTERVAL: could not convert...``, ``--port:
...``, or the key for a file) so the operator knows which one to fix; a value outside
the choices is named by the setting's own message, whichever source gave it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import get_args, get_origin

from .declare import SettingsError
from .table import Declared

__all__ = ["FALSE", "TRUE", "convert"]

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def convert(row: Declared, raw: object, source: str) -> object:
    """``raw`` as ``row``'s type; ``source`` names where it came from in errors."""
    if raw is None and row.optional:
        return None
    spec = row.setting
    try:
        if spec.parse is not None and isinstance(raw, str):
            return spec.parse(raw)
        if spec.choices:
            return _choice(row, raw)
        return _typed(row.kind, raw)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{source}: {exc}") from exc


def _choice(row: Declared, raw: object) -> object:
    # Choices are lower-case words: "Console" and "DENY" name them as well.
    text = str(raw).strip().lower()
    message = row.setting.violation(row.key, text)
    if message is not None:
        raise SettingsError(message)
    return row.kind(text) if isinstance(row.kind, type) and issubclass(row.kind, Enum) else text


def _typed(kind: object, raw: object) -> object:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise ValueError("not an integer")
        return int(raw)  # type: ignore[call-overload]
    if kind is float:
        return float(raw)  # type: ignore[arg-type]
    if get_origin(kind) is tuple:
        return _items(kind, raw)
    return str(raw)


def _items(kind: object, raw: object) -> tuple[object, ...]:
    of_text = get_args(kind)[:1] == (str,)
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if isinstance(raw, Mapping):  # YAML's {model: value} form of KEY=VALUE lists
        return tuple(f"{k}={v}" for k, v in raw.items())
    if isinstance(raw, Sequence):
        return tuple(str(x) for x in raw) if of_text else tuple(raw)
    raise ValueError("expected a list")
