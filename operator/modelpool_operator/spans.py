"""The operator's traces: one trace per reconcile of a ModelPool, a span per pod action.

::

    reconcile ModelPool ns/name           pool, generation, resync, pods, actions, problems
    ├── event: observed                   pods selected, answering
    ├── event: planned                    actions handed out, problems
    ├── pull llama3.2:1b on ollama-0      internal, from hand-out to outcome (queue included)
    └── load llama3.2:1b on ollama-1      ok, or the error (status ERROR)

Configured like every fleet process (:mod:`ollama_wire.tracing`); with tracing off the
worker holds no :class:`ReconcileSpans` and makes no call here.  An action outlives the
reconcile that handed it out: its span keeps the reconcile as parent and ends when the
lanes report its outcome, so a trace shows a pull that took minutes under the pass
that asked for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .lanes import Outcome
from .plan import Plan
from .state import Action, Observation

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["ReconcileSpans"]


class ReconcileSpans:
    """The spans of one pool's worker."""

    def __init__(self, tracer: Tracer, namespace: str, name: str) -> None:
        self._tracer = tracer
        self._namespace = namespace
        self._name = name
        self._actions: dict[tuple[str, str, str], Span] = {}

    def reconcile(self, generation: object, resync: bool) -> Span:
        attrs: dict[str, str | int | bool] = {
            "k8s.namespace.name": self._namespace,
            "ollama_fleet.pool": self._name,
            "ollama_fleet.resync": resync,
        }
        if isinstance(generation, int):
            attrs["ollama_fleet.pool.generation"] = generation
        return self._tracer.start_span(
            f"reconcile ModelPool {self._namespace}/{self._name}",
            kind=SpanKind.INTERNAL,
            attributes=attrs,
        )

    @staticmethod
    def failed(span: Span, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))

    @staticmethod
    def observed(span: Span, obs: Observation) -> None:
        span.add_event(
            "observed",
            {
                "ollama_fleet.pods": len(obs.existing),
                "ollama_fleet.pods.ready": len(obs.pods),
                "ollama_fleet.pods.answering": sum(1 for p in obs.pods if p.available),
            },
        )

    @staticmethod
    def planned(span: Span, plan: Plan, started: int) -> None:
        span.set_attribute("ollama_fleet.actions", started)
        span.set_attribute("ollama_fleet.problems", len(plan.problems))
        span.add_event(
            "planned",
            {
                "ollama_fleet.actions.planned": len(plan.actions),
                "ollama_fleet.actions.started": started,
                "ollama_fleet.problems": [p.reason for p in plan.problems],
            },
        )

    def action_started(self, parent: Span, action: Action) -> None:
        span = self._tracer.start_span(
            f"{action.kind.value} {action.name} on {action.pod}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={
                "ollama_fleet.action": action.kind.value,
                "ollama_fleet.pod": action.pod,
                "gen_ai.request.model": action.name,
                "ollama_fleet.action.reason": action.reason,
                "k8s.namespace.name": self._namespace,
                "ollama_fleet.pool": self._name,
            },
        )
        self._actions[action.slot] = span

    def action_ended(self, outcome: Outcome) -> None:
        span = self._actions.pop(outcome.action.slot, None)
        if span is None:
            return
        span.set_attribute("ollama_fleet.action.attempts", outcome.attempts)
        if not outcome.ok:
            span.set_attribute("error.type", outcome.verdict or "failed")
            span.set_status(Status(StatusCode.ERROR, outcome.error[:500]))
        span.end()

    def close(self) -> None:
        """The worker stops: actions still open end as withdrawn."""
        for span in self._actions.values():
            span.set_status(Status(StatusCode.ERROR, "withdrawn: the worker stopped"))
            span.end()
        self._actions.clear()
