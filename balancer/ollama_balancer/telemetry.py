"""The balancer's log events; rendering is the kernel's (:mod:`ollama_wire.logs`).

Log event names and their keys are API, like metric names (docs/design.md §2.10):
they are the ``EVENT_*`` constants below.  Events are emitted by the I/O shell
(:mod:`observability`) from finished records and fleet changes, never from
pure code.  Prompt and response text is never logged.
"""

from __future__ import annotations

import structlog

from ollama_wire import logs

__all__ = [
    "EVENT_FLEET_CHANGE",
    "EVENT_REQUEST",
    "LOGGER_NAME",
    "get_logger",
]

LOGGER_NAME = "ollama_fleet"

#: One per finished proxied request.  Keys: request_id, trace_id (the W3C trace, "" without
#: one: joins the line to its spans), client (API key name), tenant, tenant_header,
#: priority, queue_wait, method, path, model, backend, reason, status, attempts, bytes,
#: duration, ttfb, cold_load_seconds, eval_count, prompt_eval_count, tokens_per_second,
#: slot_wait, prompt_tokens, generated_tokens, usage_counted (reported | chunks | none),
#: finish_reason, slot_seconds, client_gone, broken_stream, error, retries, outcomes (a
#: request sent to several pods — an unload, an admin fan-out — pod -> what it did there:
#: ``unloaded``, ``kept: pinned``, ``done``, ``answered <status>: <message>``,
#: ``unreachable: <why>``; empty otherwise).  Seconds for durations.
EVENT_REQUEST = "request"
#: One per fleet change.  Keys: kind (joined | left | up | down | loaded |
#: unloaded), backend, model (loaded/unloaded), detail (the poll error of ``down``).
EVENT_FLEET_CHANGE = "fleet_change"


def get_logger(name: str = LOGGER_NAME) -> structlog.stdlib.BoundLogger:
    return logs.get_logger(name)
