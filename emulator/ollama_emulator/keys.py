"""Typed application keys (kept apart so handler modules do not import each other)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .node import EmulatedNode

__all__ = ["NODE"]

NODE: web.AppKey[EmulatedNode] = web.AppKey("node")
