"""Typed application keys (kept apart so handler modules do not import each other)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from .state import NodeState

__all__ = ["GO_AWAY", "NODE"]

NODE: web.AppKey[NodeState] = web.AppKey("node")
"""The state of the node the app serves (the handlers' only view of it)."""

GO_AWAY: web.AppKey[Callable[[float], None]] = web.AppKey("go_away")
"""Close the node's socket for so many emulated seconds (the socket is the node's)."""
