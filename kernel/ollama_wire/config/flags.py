"""Command-line flags generated from a root's settings, one section per group.

A flag not given leaves no attribute (``SUPPRESS``), so :meth:`Root.collect` can tell
it from a default and let the environment speak; each help text names the variable and
the real default once.  A list setting's flag may be repeated, each value split on
commas as the variable's is.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, get_origin

from .root import Root
from .table import Declared

__all__ = ["add_arguments", "help_text"]


class _Items(argparse.Action):
    """Append the comma-separated items of each occurrence."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.extend(p.strip() for p in str(values).split(",") if p.strip())
        setattr(namespace, self.dest, items)


def shown_default(row: Declared) -> str:
    if row.setting.show:
        return row.setting.show
    if isinstance(row.default, tuple):
        return ",".join(str(item) for item in row.default)
    return "none" if row.default is None else str(row.default)


def help_text(row: Declared) -> str:
    """``DOC [env NAME; default: VALUE]``, as ``--help`` shows it."""
    names = ", else ".join((row.env, *row.setting.also_env))
    # argparse expands %-formats in help texts
    return f"{row.setting.doc} [env {names}; default: {shown_default(row)}]".replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, root: type[Root]) -> None:
    """One flag per setting of ``root``, in one section per group."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for row in root.declared():
        section = sections.get(row.group)
        if section is None:
            section = sections[row.group] = parser.add_argument_group(row.group)
        spec = row.setting
        names = [n for n in (spec.short, row.flag) if n]
        common: dict[str, Any] = {
            "dest": row.key,
            "default": argparse.SUPPRESS,
            "help": help_text(row),
        }
        if row.kind is bool:
            section.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
        elif get_origin(row.kind) is tuple and spec.parse is None:
            section.add_argument(*names, action=_Items, metavar="VALUE", **common)
        else:
            metavar = (spec.unit or row.key).upper().replace(" ", "_")
            if spec.choices:
                # Choices are lower-case words; the variable accepts any case, so the flag does.
                common.update(choices=spec.choices, type=str.lower)
            section.add_argument(*names, metavar=metavar, **common)
