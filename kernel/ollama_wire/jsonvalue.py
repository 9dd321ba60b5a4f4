"""The type of a decoded JSON (or YAML) document, for parsers of untrusted input (pure)."""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["JsonValue"]

#: What ``json.loads`` (or ``yaml.safe_load`` of plain data) may return.  Parsers that
#: validate client or user input take this and narrow it with ``isinstance``.
JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
