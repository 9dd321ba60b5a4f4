"""One answered request, whatever answered it: what logs and metrics are made of (pure).

The request pipeline opens exactly one record per request, refusals included;
the proxy and the admin handlers fill in what they learn; listeners (metrics,
logs, token quotas) receive it once, when the answer is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .usage import NO_USAGE, Counted, Usage

__all__ = ["RequestRecord"]


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    kind: str = ""  # routes.Kind, or "" for a path the balancer does not serve
    model: str = ""
    backend: str = ""
    reason: str = ""
    status: int = 0
    attempts: int = 0
    bytes_out: int = 0
    started: float = 0.0
    duration: float = 0.0
    ttfb: float | None = None
    cold_load_seconds: float | None = None
    broken_stream: bool = False
    client_gone: bool = False
    complete: bool = False  # the whole answer was written (a later disconnect is not a 499)
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    retries: list[str] = field(default_factory=list)
    client: str = ""  # the API key's name when authentication is on (never the key)
    tenant: str = ""  # whose fair share it counted against while waiting
    priority: str = ""  # critical | standard | batch, when it went through the wait queue
    queue_wait: float | None = None  # seconds it waited in the balancer for a slot
    queue_estimate: float | None = None  # the wait estimated when it arrived (reclaim)
    preemptions: int = 0  # times the scheduler took its slot back (each resumed)
    token_estimate: Any = None  # tokens.TokenEstimate made for the wait queue (learned from)
    trace_id: str = ""  # the W3C trace it is part of (32 hex digits), when one is known
    tenant_header: str = ""  # the tenant header's value (usage per tenant), "" when absent
    chunks: int = 0  # NDJSON lines / SSE events relayed (what a stream without figures made)
    slot_seconds: float = 0.0  # held a pod's slot: from each send to the end of its answer
    usage: Usage = NO_USAGE  # prompt and generated tokens, and how they were counted
    outcomes: dict[str, str] = field(default_factory=dict)  # pod -> what a fan-out did there

    def tokens_used(self) -> int:
        """Prompt + generated tokens of the answer (0 when nothing was counted): its usage
        when read, else Ollama's final metrics."""
        if self.usage.counted is not Counted.NONE:
            return self.usage.prompt + self.usage.generated
        total = 0
        for key in ("prompt_eval_count", "eval_count"):
            value = self.metrics.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                total += value
        return total
