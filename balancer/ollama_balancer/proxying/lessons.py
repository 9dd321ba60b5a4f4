"""What an answer taught, read once when its relay is complete: the model's load and
service times (for routing and the wait queue's estimates; the service time is the answer's
hold on its slot, never the time it waited before), how far the tenant's token
estimate was off (from Ollama's final metrics line), and the model's seconds per token.

Ollama's own API ends with its metrics (``eval_duration``, ``eval_count``).  Its OpenAI and
Anthropic APIs do not: there the seconds per generated token are timed on the relay, from
the first streamed event to the last over the tokens it counted (:mod:`..core.usage`) — one
event per token, the first sent once the prompt is read.  Without that, a fleet whose
clients speak OpenAI would keep the default rates forever, and every slot-second estimate
(the scheduler's order, reclaim and admission) would be off by the model's speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ..core.ledger import COLD_LOAD_THRESHOLD
from ..core.rankers import COLD_REASONS, Reason
from ..core.shared.model import Learned
from ..core.tokens import RateBook, TokenCorrection, TokenEstimate
from ..core.usage import Counted
from .attempt import Attempt
from .relay import Relay

__all__ = ["METRIC_KEYS", "Lessons", "final_metrics"]

#: What the final line of an answer says that the record keeps.
METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "done_reason",
)

#: The answers whose last line is Ollama's own JSON with the final metrics.
_WITH_METRICS = frozenset({"application/x-ndjson", "application/json"})
#: Streams without them (OpenAI, Anthropic): one event per generated token.
_TIMED = "text/event-stream"
#: Choices whose answer also waited for the model to load.
_LOADS = frozenset({*COLD_REASONS, Reason.LOADING})


class Lessons:
    """Learns from complete answers; holds the token correction the wait queue reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = TokenCorrection()
        #: Seconds per prompt and per generated token, per model: a request's slot-seconds.
        self.rates = RateBook()
        self._clock = clock

    def learn(
        self, at: Attempt, relay: Relay, streamed_since: float | None = None
    ) -> Learned | None:
        """What ``at``'s complete answer taught; its final metrics go on the record.
        ``streamed_since``: when its first byte came (a stream relayed in one go), so that an
        answer without metrics still teaches the seconds per token."""
        record = at.record
        metrics = final_metrics(relay.tail) if relay.content_type in _WITH_METRICS else None
        if not metrics and streamed_since is not None and relay.content_type == _TIMED:
            self._time_tokens(at, self._clock() - streamed_since)
        if metrics:
            record.metrics = metrics
            if isinstance(record.token_estimate, TokenEstimate):
                self.tokens.learn(
                    record.tenant,
                    at.req.key,
                    record.token_estimate,
                    _count(metrics, "prompt_eval_count"),
                    _count(metrics, "eval_count"),
                )
            self.rates.learn(
                at.req.key,
                _count(metrics, "prompt_eval_count"),
                _count(metrics, "prompt_eval_duration"),
                _count(metrics, "eval_count"),
                _count(metrics, "eval_duration"),
            )
            load_ns = metrics.get("load_duration") or 0
            total_ns = metrics.get("total_duration") or 0
            return Learned(
                load_seconds=load_ns / 1e9 if load_ns / 1e9 > COLD_LOAD_THRESHOLD else None,
                service_seconds=max(0.0, (total_ns - load_ns) / 1e9) if total_ns else None,
            )
        service = self._slot_seconds(at, relay, streamed_since)
        if record.cold_load_seconds is not None and record.ttfb is not None:
            return Learned(load_seconds=record.ttfb, service_seconds=service)
        if service is not None:
            return Learned(service_seconds=service)
        return None

    def _slot_seconds(
        self, at: Attempt, relay: Relay, streamed_since: float | None
    ) -> float | None:
        """How long the answer held its slot, without metrics to say so.

        The request's lifetime is no measure: it includes the wait room, Ollama's own
        queue, and a load the request waited for (tens of seconds against a service of a
        few), and the expected waits built on it send requests to a loading pod rather
        than to a busy warm one that frees a slot every few seconds.  A stream is timed
        from its first event, sent once the prompt is read, plus the prompt's time: the
        learned (or default) rate's, but never more than the first byte took since the
        request was sent (the default rate is a guess that can be many times a fast pod's
        real prefill, and a service time inflated by it makes a warm pod's wait look like a
        load); an answer in one body from its sending, unless it waited for a load."""
        record = at.record
        now = self._clock()
        if streamed_since is not None and relay.content_type == _TIMED:
            prompt = self.rates.seconds(at.req.key, TokenEstimate(record.usage.prompt, 0))
            if record.ttfb is not None:
                prompt = min(prompt, record.ttfb)
            return max(0.0, now - streamed_since) + prompt
        if at.choice.reason in _LOADS or record.cold_load_seconds is not None:
            return None
        return max(0.0, now - record.started - (record.queue_wait or 0.0))

    def _time_tokens(self, at: Attempt, seconds: float) -> None:
        usage = at.record.usage
        if usage.counted is Counted.NONE or seconds <= 0.0:
            return
        # The prompt's time is not measured here (the first byte also waited for the slot
        # and the network): only the generated tokens teach.
        self.rates.learn(at.req.key, None, None, usage.generated, round(seconds * 1e9))


def final_metrics(tail: bytes) -> dict[str, Any] | None:
    """The metrics of the final ``"done": true`` line ending ``tail``, if it is one."""
    line = tail.rstrip(b"\n").rpartition(b"\n")[2]
    if b'"done"' not in line:
        return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not doc.get("done"):
        return None
    return {k: doc[k] for k in METRIC_KEYS if k in doc}


def _count(metrics: dict[str, Any], key: str) -> int | None:
    value = metrics.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
