"""Declaring settings: one dataclass field per setting, carrying all that is said about it.

A *group* is a frozen dataclass of the settings one concern needs (:class:`Group`); each
field is declared with :func:`setting`, whose :class:`Setting` holds the documentation,
the unit, the bounds or choices, and how the setting is named outside: its *key* (the
YAML key, from which the ``ENV_PREFIX + KEY`` variable and the ``--key`` flag derive),
or a flag of its own.  A group checks its bounds and its own rules when it is built, so
no group exists with a value out of bounds, however it was made.  Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Group", "Setting", "SettingsError", "setting", "setting_of"]

_META = "ollama_wire.config"


class SettingsError(ValueError):
    """A setting is missing, malformed or out of bounds; the message names it."""


def _number(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else str(limit)


@dataclass(frozen=True, slots=True)
class Setting:
    """What is said about one setting (the data behind its flag, variable and checks)."""

    doc: str
    """What it does, as ``--help`` shows it."""
    key: str = ""
    """Its name outside (YAML key, base of the variable and the flag); empty = the field's."""
    unit: str = ""
    """``seconds``, ``bytes``...: the flag's value is named after it."""
    gt: float | None = None
    """The value must be greater than this."""
    ge: float | None = None
    """The value must be at least this."""
    le: float | None = None
    """The value must be at most this."""
    choices: tuple[str, ...] = ()
    """The only values allowed (an enumeration's values when the default is a member)."""
    invalid: str = ""
    """Message for a value out of bounds or choices, with ``{key}`` and ``{value}``;
    empty = ``KEY: must be > 0`` or ``KEY: must be one of a, b``."""
    flag: str = ""
    """The long flag; empty = ``--`` and the key with dashes."""
    short: str = ""
    """A one-letter flag as well, e.g. ``-n``."""
    parse: Callable[[str], object] | None = None
    """Reads the text of a variable or flag when the type alone does not say how."""
    show: str = ""
    """The default as ``--help`` shows it; empty = the value itself."""
    also_env: tuple[str, ...] = ()
    """Variables read, in order, when the setting's own is not set (e.g. ``HOME``)."""

    def violation(self, key: str, value: object) -> str | None:
        """Why ``value`` is not allowed (None when it is)."""
        if value is None:
            return None
        if self.choices:
            if str(value) in self.choices:
                return None
            default = f"{{key}}: must be one of {', '.join(self.choices)}"
            return (self.invalid or default).format(key=key, value=value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        checks = (
            (self.gt, ">", self.gt is not None and value <= self.gt),
            (self.ge, ">=", self.ge is not None and value < self.ge),
            (self.le, "<=", self.le is not None and value > self.le),
        )
        for limit, sign, broken in checks:
            if broken and limit is not None:
                default = f"{{key}}: must be {sign} {_number(limit)}"
                return (self.invalid or default).format(key=key, value=value)
        return None


def setting(
    default: Any,
    doc: str,
    *,
    key: str = "",
    unit: str = "",
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] = (),
    invalid: str = "",
    flag: str = "",
    short: str = "",
    parse: Callable[[str], object] | None = None,
    show: str = "",
    also_env: tuple[str, ...] = (),
) -> Any:
    """A group field holding one setting (``default`` must be immutable)."""
    if not choices and isinstance(default, StrEnum):
        choices = tuple(member.value for member in type(default))
    spec = Setting(doc, key, unit, gt, ge, le, choices, invalid, flag, short, parse, show, also_env)
    return dataclasses.field(default=default, metadata={_META: spec})


def setting_of(field: dataclasses.Field[Any]) -> Setting | None:
    """The :class:`Setting` a field was declared with (None: not a setting)."""
    spec = field.metadata.get(_META)
    return spec if isinstance(spec, Setting) else None


class Group:
    """Base of a frozen dataclass of settings: built only with values within bounds.

    :meth:`check` adds the group's rules between its own settings.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            spec = setting_of(field)
            if spec is not None:
                message = spec.violation(spec.key or field.name, getattr(self, field.name))
                if message is not None:
                    raise SettingsError(message)
        self.check()

    def check(self) -> None:
        """Raise :class:`SettingsError` when settings of this group contradict each other."""
