"""One logging set-up for every component: structlog renders JSON in production and
readable lines in a terminal, and the standard library's records (aiohttp, kubernetes,
kopf, our own ``logging.getLogger`` users) go through the same renderer.

Each application keeps its own event names and keys (they are API, docs/design.md §2.10);
this module only decides how a record looks on the wire.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["LogFormat", "configure_logging", "get_logger"]


class LogFormat(StrEnum):
    """How log records are rendered."""

    AUTO = "auto"
    """JSON, unless the stream is a terminal."""
    JSON = "json"
    """One JSON object per line (``event``, ``level``, ``logger``, ``timestamp``, keys)."""
    CONSOLE = "console"
    """Aligned, human-readable lines (coloured on a terminal)."""


def configure_logging(
    fmt: LogFormat | str = LogFormat.AUTO,
    level: str = "info",
    stream: TextIO | None = None,
    *,
    foreign: Sequence[structlog.types.Processor] = (),
) -> None:
    """Route structlog and stdlib logging through one renderer on ``stream`` (stderr).

    ``foreign`` processors run on standard-library records only, after their ``extra``
    fields were added: an application turns a library's extras into keys there.
    """
    fmt = LogFormat(fmt)
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    json_logs = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not tty)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            # A library-style call (``log.info("%s: %s", a, b)``) reads as a sentence.
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), *foreign],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # JSON needs tracebacks as a string; the console renderer prints them itself.
                *([structlog.processors.format_exc_info] if json_logs else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _dumps(obj: Any, **kw: Any) -> str:
    """orjson for the JSON lines (one per request); the standard library for what orjson
    refuses (an integer beyond 64 bits, a lone surrogate)."""
    try:
        return orjson.dumps(obj, default=kw.get("default")).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return json.dumps(obj, **kw)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the ``logger`` key of every record)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
