"""The root of an application's settings: its groups, built from flat keys or read from
its sources.  Pure: the environment is always passed in as a mapping, never read here.

Precedence, lowest first: the defaults, ``base`` (e.g. a YAML file's keys), the
environment, the flags.  A flag whose value is None counts as not given.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self, cast, get_type_hints

from .convert import convert
from .declare import SettingsError
from .table import Declared, declared

__all__ = ["Root"]

_INDEXES: dict[type, dict[str, Declared]] = {}


class Root:
    """Base of a frozen dataclass whose fields are the application's settings groups."""

    __slots__ = ()

    ENV_PREFIX: ClassVar[str] = ""
    """Every variable is this prefix and a setting's key in capitals."""
    EMPTY_ENV_IS_UNSET: ClassVar[bool] = False
    """Whether a variable set to the empty string counts as not set (else it is the value)."""

    @classmethod
    def declared(cls) -> tuple[Declared, ...]:
        """One row per setting, in ``--help`` order."""
        return declared(cls, cls.ENV_PREFIX)

    @classmethod
    def row(cls, key: str) -> Declared:
        """The setting named ``key`` outside."""
        index = _INDEXES.get(cls)
        if index is None:
            index = _INDEXES[cls] = {row.key: row for row in cls.declared()}
        row = index.get(key)
        if row is None:
            raise SettingsError(f"unknown setting {key!r}")
        return row

    @classmethod
    def build(cls, **values: object) -> Self:
        """The settings with these values (by key, already typed), defaults elsewhere."""
        groups = _by_group(cls, values)
        types = get_type_hints(cls)
        built: Self = cast(Any, cls)(**{name: types[name](**kw) for name, kw in groups.items()})
        return built

    def replace(self, **values: object) -> Self:
        """A copy with these values (by key, already typed)."""
        groups = _by_group(type(self), values)
        changed = {
            name: dataclasses.replace(getattr(self, name), **kw)
            for name, kw in groups.items()
            if kw
        }
        return cast(Self, dataclasses.replace(cast(Any, self), **changed))

    @classmethod
    def collect(
        cls,
        flags: argparse.Namespace | Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        base: Mapping[str, object] | None = None,
    ) -> dict[str, object]:
        """The values the sources give, by key and typed (keys not given are absent)."""
        given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
        environ = environ or {}
        values: dict[str, object] = {}
        for key, raw in (base or {}).items():
            values[key] = convert(cls.row(key), raw, key)
        for row in cls.declared():
            for env in (row.env, *row.setting.also_env):
                text = environ.get(env)
                if text is not None and not (text == "" and cls.EMPTY_ENV_IS_UNSET):
                    values[row.key] = convert(row, text, env)
                    break
            if given.get(row.key) is not None:
                values[row.key] = convert(row, given[row.key], row.flag)
        return values


def _by_group(root: type[Root], values: Mapping[str, object]) -> dict[str, dict[str, object]]:
    groups: dict[str, dict[str, object]] = {f.name: {} for f in dataclasses.fields(cast(Any, root))}
    for key, value in values.items():
        row = root.row(key)
        groups[row.group][row.attr] = value
    return groups
