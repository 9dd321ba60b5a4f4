"""Logging set-up: structlog renders JSON in production and readable lines in a terminal.

Log event names and their keys are API, like metric names (DESIGN.md §4.10):
they are the ``EVENT_*`` constants below.  Events are emitted by the I/O shell
(:mod:`observability`) from finished records and fleet changes, never from
pure code.  Prompt and response text is never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

__all__ = [
    "EVENT_FLEET_CHANGE",
    "EVENT_REQUEST",
    "LOGGER_NAME",
    "configure_logging",
    "get_logger",
]

LOGGER_NAME = "ollama_fleet"

#: One per finished proxied request.  Keys: request_id, client (API key name), method, path, model,
#: backend, reason, status, attempts, bytes, duration, ttfb, cold_load_seconds,
#: eval_count, prompt_eval_count, tokens_per_second, slot_wait, client_gone,
#: broken_stream, error, retries.  Seconds for durations.
EVENT_REQUEST = "request"
#: One per fleet change.  Keys: kind (joined | left | up | down | loaded |
#: unloaded), backend, model (loaded/unloaded), detail (the poll error of ``down``).
EVENT_FLEET_CHANGE = "fleet_change"


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging (aiohttp, kubernetes, kopf) through one renderer.

    ``fmt`` ``auto`` means JSON unless ``stream`` (default stderr) is a terminal.
    """
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    json_logs = fmt == "json" or (fmt == "auto" and not tty)
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
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # aiohttp's and kubernetes' stdlib logs go through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
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


def get_logger(name: str = LOGGER_NAME) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
