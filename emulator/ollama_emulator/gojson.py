"""Reading a request body the way gin's ``ShouldBindJSON`` does (pure).

gin decodes with ``json.NewDecoder(body).Decode(&req)``: the **first** JSON value
is read and trailing bytes are ignored, an empty body is ``EOF``, a cut-off one
``unexpected EOF``, and syntax errors name the offending character the way Go's
``encoding/json`` scanner does (``invalid character 'x' looking for beginning of
value``).  Clients see these texts in 400 answers, so they are worth matching.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["GoJSONError", "decode_first", "go_kind", "quote_char"]

_WHITESPACE = b" \t\r\n"

#: Python's JSONDecodeError message → the context Go's scanner names.
_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after {container} element",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}


class GoJSONError(ValueError):
    """A body Go's decoder refuses; ``message`` is Go's error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def quote_char(byte: int) -> str:
    """Go's ``quoteChar``: the character in single quotes, escaped like ``strconv.Quote``."""
    if byte == ord("'"):
        return "'\\''"
    if byte == ord('"'):
        return "'\"'"
    escapes = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}
    if byte in escapes:
        return f"'{escapes[byte]}'"
    if byte == ord("\\"):
        return "'\\\\'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if 0x80 <= byte < 0xA0 or byte == 0xAD:  # Go's string(byte) is U+0080..U+009F: not printable
        return f"'\\u{byte:04x}'"
    return f"'{chr(byte)}'"


def go_kind(value: Any, *, literal: bool = False) -> str:
    """The JSON kind Go names in ``cannot unmarshal <kind> into ...``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {json.dumps(value)}" if literal else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def decode_first(raw: bytes) -> Any:
    """The first JSON value of ``raw``; trailing bytes are ignored as Go's Decoder does."""
    start = len(raw) - len(raw.lstrip(_WHITESPACE))
    if start == len(raw):
        raise GoJSONError("EOF")
    text = raw.decode("utf-8", "replace")  # Go keeps invalid UTF-8 inside strings as U+FFFD
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise GoJSONError(_syntax_error(raw, text, exc)) from None
    return value


def _syntax_error(raw: bytes, text: str, exc: json.JSONDecodeError) -> str:
    pos = exc.pos
    if pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    # Map the character offset back to a byte (equal while everything before is ASCII).
    byte = raw[pos] if text[:pos].isascii() else ord(text[pos]) if ord(text[pos]) < 256 else 0xFF
    context = next((c for m, c in _CONTEXT.items() if exc.msg.startswith(m)), None)
    if context is None:
        context = "looking for beginning of value"
    if "{container}" in context:
        opener = _enclosing(text, pos)
        context = "after object key:value pair" if opener == "{" else "after array element"
    return f"invalid character {quote_char(byte)} {context}"


def _enclosing(text: str, pos: int) -> str:
    """The bracket that encloses ``pos`` (strings skipped), to tell objects from arrays."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""
