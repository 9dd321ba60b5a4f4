"""Metrics, logs and the fleet view of one balancer app: the I/O shell around pure records.

:func:`install` is called once by :func:`app.create_app`.  It listens to what
the balancer already publishes — a :class:`RequestRecord` per finished request
(``bal.records``), a :class:`FleetChange` per change in the fleet
(``view.subscribe``), a :class:`PollResult` per poll (``bal.polls``) — and turns
each into metric updates and one log event.  Nothing in the proxy, the poller
or routing knows about Prometheus or structlog.

Routes: ``GET /metrics`` (prometheus-client's aiohttp handler: the text
format, or OpenMetrics when the scraper asks for it, gzipped when it accepts
gzip), ``GET /-/fleet`` (JSON, see
:mod:`fleetview`), ``GET /-/dashboard`` (a self-contained HTML page polling
``/-/fleet``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from ollama_wire.names import InvalidModelName, canonical

from .core.fleet import FleetSnapshot, PollResult
from .core.rankers import COLD_REASONS
from .core.record import RequestRecord
from .core.report import FleetReport, build, model_display
from .core.routes import Kind
from .metrics import (
    ANONYMOUS,
    NONE,
    OTHER,
    DemandView,
    FleetMetrics,
    QueueMetrics,
    RequestSample,
    SchedulerMetrics,
)
from .polling import FleetChange
from .shared.fallback import FallbackState
from .shared.metrics import SharedMetrics
from .state import BALANCER, Balancer
from .telemetry import EVENT_FLEET_CHANGE, EVENT_REQUEST, get_logger

__all__ = [
    "METRICS",
    "fleet_report",
    "install",
    "model_label",
    "noteworthy",
    "request_fields",
    "request_sample",
    "slot_wait_seconds",
]

METRICS = web.AppKey("metrics", FleetMetrics)

_WARN_CHANGES = frozenset({"down", "left"})
_MAX_LOGGED_MODEL = 200


def fleet_report(bal: Balancer, *, fleet_wide: bool = False) -> FleetReport:
    """The fleet as this replica sees it.  Metrics carry this replica's own counts (a
    ``sum`` over replicas is the fleet's, with or without shared state); ``/-/fleet`` is
    ``fleet_wide``: every replica's requests, read from the shared state."""
    occupancy = bal.shared.occupancy() if fleet_wide else bal.ledger.occupancy()
    return build(bal.fleet(occupancy), draining=bal.draining)


def model_label(snapshot: FleetSnapshot, name: str) -> str:
    """``name`` as a metric label: a model some pod holds, else :data:`OTHER`.

    Clients choose model names freely; only names the fleet knows may become
    label values, so series stay bounded by pods × models.  A body whose model
    could not be read (empty, invalid) is ``other`` too.
    """
    try:
        key = canonical(name)
    except InvalidModelName:
        return OTHER
    for state in snapshot.backends:
        if state.has_installed(key) or state.resident_model(key) is not None:
            return model_display(key)
    return OTHER


def _failed_backends(retries: list[str], names: list[str]) -> tuple[str, ...]:
    """Backends named by the proxy's ``"<backend>: <why>"`` retry notes."""
    out = []
    for note in retries:
        found = [n for n in names if note.startswith(n + ": ")]
        if found:
            out.append(max(found, key=len))
    return tuple(out)


def _int(metrics: dict[str, Any], key: str) -> int | None:
    value = metrics.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def slot_wait_seconds(metrics: dict[str, Any]) -> float | None:
    """total − load − prompt_eval − eval (docs/ollama.md §6.2); None without generation timings."""
    total = _int(metrics, "total_duration")
    evaluated = _int(metrics, "eval_duration")
    if total is None or evaluated is None:
        return None  # /api/embed and /v1 answers carry no eval timings
    load = _int(metrics, "load_duration") or 0
    prompt = _int(metrics, "prompt_eval_duration") or 0  # omitted when the cache served all
    return max(0, total - load - prompt - evaluated) / 1e9


def request_sample(
    record: RequestRecord,
    snapshot: FleetSnapshot,
    tenants: Callable[[str], str] | None = None,
) -> RequestSample:
    """What ``record`` adds to the metrics; ``tenants`` bounds the tenant label (None: the
    sample is for a log line only)."""
    m = record.metrics
    usage = record.usage
    return RequestSample(
        model=model_label(snapshot, record.model),
        backend=record.backend or NONE,
        status=record.status,
        reason=record.reason or NONE,
        duration=record.duration,
        client=record.client or ANONYMOUS,
        ttfb=record.ttfb,
        attempts=record.attempts,
        failed_backends=_failed_backends(record.retries, snapshot.names()),
        cold_load=record.reason in COLD_REASONS,
        cold_load_seconds=record.cold_load_seconds,
        eval_count=_int(m, "eval_count"),
        eval_duration_ns=_int(m, "eval_duration"),
        prompt_eval_count=_int(m, "prompt_eval_count"),
        slot_wait=slot_wait_seconds(m),
        usage=record.kind == Kind.INFERENCE and tenants is not None,
        tenant=tenants(record.tenant_header) if tenants is not None else NONE,
        prompt_tokens=usage.prompt,
        generated_tokens=usage.generated,
        counted=str(usage.counted),
        slot_seconds=record.slot_seconds,
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def request_fields(record: RequestRecord, sample: RequestSample) -> dict[str, Any]:
    """The keys of the ``request`` log event (no prompt or response text, ever)."""
    rate = None
    if sample.eval_count is not None and sample.eval_duration_ns:
        rate = round(sample.eval_count / sample.eval_duration_ns * 1e9, 2)
    usage = record.usage
    return {
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "client": record.client,
        "tenant": record.tenant,
        "tenant_header": record.tenant_header,
        "priority": record.priority,
        "queue_wait": _r(record.queue_wait),
        "queue_estimate": _r(record.queue_estimate),
        "preemptions": record.preemptions,
        "method": record.method,
        "path": record.path,
        "model": record.model[:_MAX_LOGGED_MODEL],
        "backend": record.backend,
        "reason": record.reason,
        "status": record.status,
        "attempts": record.attempts,
        "bytes": record.bytes_out,
        "duration": _r(record.duration),
        "ttfb": _r(record.ttfb),
        "cold_load_seconds": _r(record.cold_load_seconds),
        "eval_count": sample.eval_count,
        "prompt_eval_count": sample.prompt_eval_count,
        "tokens_per_second": rate,
        "slot_wait": _r(sample.slot_wait),
        "prompt_tokens": usage.prompt,
        "generated_tokens": usage.generated,
        "usage_counted": str(usage.counted),
        "finish_reason": usage.finish_reason,
        "slot_seconds": _r(record.slot_seconds),
        "client_gone": record.client_gone,
        "broken_stream": record.broken_stream,
        "error": record.error,
        "retries": list(record.retries),
        "outcomes": dict(record.outcomes),
    }


def noteworthy(record: RequestRecord) -> bool:
    """Counted and logged at info: inference, admin, unknown paths and every refusal.

    Listings and operations endpoints that were answered without an error (probes,
    scrapes, ``/api/tags`` polling by front ends) are logged at debug only.
    """
    return record.kind not in (Kind.LISTING, Kind.OPS) or bool(record.error)


def demand_view(bal: Balancer) -> DemandView:
    """This replica's demand (its requests in flight and waiting), the warm slots and the
    expected waits: summed over replicas it is the fleet's demand, with or without shared
    state (waiting requests are always a replica's own)."""
    inflight: dict[str, int] = {}
    occupancy = bal.ledger.occupancy()
    for (_pod, key), n in occupancy.held.items():
        model = model_display(key)
        inflight[model] = inflight.get(model, 0) + n
    slots: dict[str, int] = {}
    for state in bal.fleet(occupancy).routable:
        for key in state.resident:
            model = model_display(key)
            slots[model] = slots.get(model, 0) + max(1, state.backend.slots)
    queued: dict[tuple[str, str], int] = {}
    expected: dict[str, float] = {}
    room = bal.proxy.waitroom
    if room is not None:
        for (key, cls), n in room.queue.depth(bal.clock()).items():
            queued[(model_display(key), str(cls))] = n
        expected = {model_display(k): v for k, v in room.expected_wait.items()}
    return DemandView(inflight, queued, slots, expected)


def _enabled(log: Any, level: int) -> bool:
    """Whether ``log`` writes ``level`` (structlog's stdlib and filtering loggers both say)."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(level))


class _PenaltyWatch:
    """Counts cool-downs by watching the ledger's penalty deadlines move forward.

    The proxy imposes penalties inside a request; a deadline that moved since
    the last finished request is a new penalty.  (Two penalties on one pod
    between two finished requests count once: good enough for a rate.)
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def new(self, penalties: Mapping[str, float]) -> list[str]:
        fresh = []
        for backend, until in penalties.items():
            if isinstance(until, int | float) and until > self._seen.get(backend, float("-inf")):
                fresh.append(str(backend))
                self._seen[backend] = float(until)
        return fresh


def install(app: web.Application) -> None:
    """Metrics, log events and the fleet view routes for the balancer ``app``."""
    bal = app[BALANCER]
    log = get_logger("ollama_fleet.balancer")

    def snap() -> FleetSnapshot:
        return bal.view.snapshot

    metrics = FleetMetrics(lambda: fleet_report(bal), usage_tenants=bal.settings.usage.tenants)
    app[METRICS] = metrics
    penalties = _PenaltyWatch()
    dashboard = (
        resources.files(__package__).joinpath("static/dashboard.html").read_text(encoding="utf-8")
    )

    def on_record(record: RequestRecord) -> None:
        if not noteworthy(record):
            if _enabled(log, logging.DEBUG):
                log.debug(EVENT_REQUEST, **request_fields(record, request_sample(record, snap())))
            return
        sample = request_sample(record, snap(), metrics.tenants)
        metrics.observe_request(sample)
        for backend in penalties.new(bal.ledger.penalties()):
            metrics.observe_penalty(backend)
        # The log event's fields are built only when a line will be written.
        if record.status >= 500 and not record.client_gone:
            if _enabled(log, logging.WARNING):
                log.warning(EVENT_REQUEST, **request_fields(record, sample))
        elif _enabled(log, logging.INFO):
            log.info(EVENT_REQUEST, **request_fields(record, sample))

    def on_change(change: FleetChange) -> None:
        metrics.observe_change(change.kind)
        fields = {
            "kind": change.kind,
            "backend": change.backend,
            "model": change.model,
            "detail": change.detail,
        }
        if change.kind in _WARN_CHANGES:
            log.warning(EVENT_FLEET_CHANGE, **fields)
        else:
            log.info(EVENT_FLEET_CHANGE, **fields)

    def on_poll(result: PollResult) -> None:
        metrics.observe_poll(result.backend, result.duration, bool(result.error))

    bal.records.append(on_record)
    queue_metrics = QueueMetrics(metrics.registry, lambda: demand_view(bal))
    room = bal.proxy.waitroom
    if room is not None:
        # Only models the fleet holds become labels (a 404'd name from a client is "other").
        room.listeners.append(
            lambda w, how, now: queue_metrics.left_queue(
                model_label(bal.view.snapshot, w.model), str(w.priority), how, w.waited(now)
            )
        )
        if room.scheduler is not None:
            scheduler = SchedulerMetrics(
                metrics.registry,
                lambda: {
                    label: p.shares
                    for m, p in room.plans.items()
                    if (label := model_label(bal.view.snapshot, m)) != OTHER
                },
            )
            resumer = bal.proxy.resumer
            if resumer is not None:

                def resumed(model: str, outcome: str, waste: float) -> None:
                    scheduler.resumes.labels(model_display(model), outcome).inc()
                    if waste > 0:
                        scheduler.waste.labels(model_display(model)).inc(waste)

                resumer.observe = resumed
            room.preempt_listeners.append(
                lambda model, cls, reason: scheduler.preemptions.labels(
                    model_display(model), cls, reason
                ).inc()
            )
            room.estimate_listeners.append(
                lambda w, estimate, waited: scheduler.estimated(str(w.priority), estimate, waited)
            )
    if bal.settings.shared.url and isinstance(bal.shared, FallbackState):
        # Only with a store: a single replica without one has no "shared state down".
        shared = bal.shared
        shared.observer = SharedMetrics(metrics.registry, held=shared.own_leases)
    bal.view.subscribe(on_change)
    bal.polls.append(on_poll)

    metrics_handler = make_aiohttp_handler(metrics.registry)

    async def fleet_handler(request: web.Request) -> web.StreamResponse:
        doc = fleet_report(bal, fleet_wide=True).to_json()
        doc["shared_state"] = bal.shared.status()
        view = demand_view(bal)
        doc["demand"] = view.demand()
        doc["queues"] = [
            {
                "model": model,
                "class": cls,
                "waiting": n,
                "expected_wait": _r(view.expected_wait.get(model)),
            }
            for (model, cls), n in sorted(view.queued.items())
        ]
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    async def dashboard_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=dashboard,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/fleet", fleet_handler)
    app.router.add_get("/-/dashboard", dashboard_handler)
