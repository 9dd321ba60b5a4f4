"""Calls into libraries whose type hints come and go between releases.

``mypy --strict`` flags a call of an unannotated function (``no-untyped-call``); the fix of
``# type: ignore[no-untyped-call]`` goes stale — and fails ``--strict`` as an unused ignore —
the day the library annotates the function (redis-py 8 did so for ``PubSub.aclose``).  Passing
the function through :func:`loose` instead type-checks the same with either release: the call
is of a ``Callable[..., Any]``, whatever the library says of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["loose"]


def loose(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself, typed as taking anything and returning :data:`~typing.Any`."""
    return fn
