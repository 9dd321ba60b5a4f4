"""The table of a root's settings: every setting of every group, with its names outside.

A *root* is a frozen dataclass whose fields are groups (:class:`~.declare.Group`); the
field's name is the group's name (``--help`` section, path ``settings.GROUP.ATTR``).
Walking it once gives one :class:`Declared` row per setting, from which the flags, the
environment names and the checks of the table tests are all read.  Pure.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

from .declare import Group, Setting, setting_of

__all__ = ["Declared", "declared"]


@dataclass(frozen=True, slots=True)
class Declared:
    """One setting of a root, as the outside sees it."""

    group: str
    """The root's field holding its group, e.g. ``routing``."""
    attr: str
    """Its field in the group, e.g. ``strategy``."""
    key: str
    """Its name outside, e.g. ``routing_policy`` (the YAML key)."""
    env: str
    """Its environment variable, e.g. ``OLLAMA_FLEET_ROUTING_POLICY``."""
    flag: str
    """Its long flag, e.g. ``--routing-policy``."""
    kind: Any
    """Its type with ``| None`` removed (``str``, ``int``, ``tuple[str, ...]``, an enum...)."""
    optional: bool
    """Whether None is a value (``X | None``)."""
    default: object
    setting: Setting

    @property
    def path(self) -> str:
        return f"{self.group}.{self.attr}"


def _unwrap(kind: Any) -> tuple[Any, bool]:
    if get_origin(kind) in (Union, types.UnionType):
        rest = [a for a in get_args(kind) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(get_args(kind)):
            return rest[0], True
    return kind, False


_TABLES: dict[tuple[type, str], tuple[Declared, ...]] = {}


def declared(root: type, env_prefix: str) -> tuple[Declared, ...]:
    """Every setting of ``root``'s groups, in declaration order."""
    table = _TABLES.get((root, env_prefix))
    if table is None:
        table = _TABLES[(root, env_prefix)] = _walk(root, env_prefix)
    return table


def _walk(root: type, env_prefix: str) -> tuple[Declared, ...]:
    rows: list[Declared] = []
    root_hints = get_type_hints(root)
    for group_field in dataclasses.fields(root):
        group = root_hints[group_field.name]
        if not (isinstance(group, type) and issubclass(group, Group)):
            raise TypeError(f"{root.__name__}.{group_field.name} is not a settings group")
        hints = get_type_hints(group)
        for field in dataclasses.fields(cast(Any, group)):
            spec = setting_of(field)
            if spec is None:
                continue
            key = spec.key or field.name
            kind, optional = _unwrap(hints[field.name])
            rows.append(
                Declared(
                    group=group_field.name,
                    attr=field.name,
                    key=key,
                    env=env_prefix + key.upper(),
                    flag=spec.flag or "--" + key.replace("_", "-"),
                    kind=kind,
                    optional=optional,
                    default=field.default,
                    setting=spec,
                )
            )
    return tuple(rows)
