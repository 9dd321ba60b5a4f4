"""Prometheus metrics of one balancer replica: names, types, labels and how they are fed.

Metric names and label names are API (docs/design.md §2.10): they are the
constants below and nowhere else.  Every :class:`FleetMetrics` owns its own
:class:`CollectorRegistry`, so several apps in one process (tests, the demo)
never share or collide on series.

Two kinds of series:

* **events**, counted when they happen, by the caller (:mod:`observability`)
  from a finished :class:`RequestRecord`, a poll result or a fleet change;
* **state** (up, resident, in-flight, loading, penalised), computed at scrape
  time from a :class:`FleetReport` by a custom collector, so a gauge can never
  drift from the ledger it describes.

Cardinality is bounded by pods × models: ``backend`` is always a pod of the
fleet (or ``none`` when no pod was chosen), ``model`` a model some pod holds;
any other name a client sends is counted as ``other``.  ``client`` is the name
of an API key from the keys file (``anonymous`` without one), never a key.

Usage per tenant (README "Usage per tenant"): ``ollama_fleet_usage_*_total`` count the
requests, prompt and generated tokens and slot-seconds of inference requests by
``client`` (the API key's name) and ``tenant`` (the tenant header's value: the first
``usage_tenants`` distinct values seen by this replica have their own series, any later
one is ``other``, no header is ``none``); the token counters also say how they were
``counted`` (:class:`~.core.usage.Counted`: ``reported`` by the answer, or ``chunks``
relayed by a stream that ended without figures).  Summed over replicas they are the
fleet's.

Besides its own series, the registry carries what every Prometheus exporter is
expected to expose: ``ollama_fleet_build_info`` (version, Python version), the
``process_*`` collector (CPU, memory, open files) and the ``python_*`` platform
and GC collectors.  Units are base units (seconds, bytes): the decode speed is
seconds per output token, never tokens per second, so it aggregates like any
other duration histogram.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core.report import FleetReport

__all__ = [
    "ANONYMOUS",
    "NONE",
    "OTHER",
    "BoundedLabel",
    "FleetMetrics",
    "RequestSample",
    "package_version",
]

# ---- metric names (API)
REQUESTS = "ollama_fleet_requests_total"
REQUEST_DURATION = "ollama_fleet_request_duration_seconds"
TIME_TO_FIRST_BYTE = "ollama_fleet_time_to_first_byte_seconds"
GENERATED_TOKENS = "ollama_fleet_generated_tokens_total"
PROMPT_TOKENS = "ollama_fleet_prompt_tokens_total"
TIME_PER_OUTPUT_TOKEN = "ollama_fleet_time_per_output_token_seconds"
CLIENT_REQUESTS = "ollama_fleet_client_requests_total"
SLOT_WAIT = "ollama_fleet_slot_wait_seconds"
COLD_LOADS = "ollama_fleet_cold_loads_total"
COLD_LOAD_DURATION = "ollama_fleet_cold_load_duration_seconds"
RETRIES = "ollama_fleet_retries_total"
ATTEMPT_FAILURES = "ollama_fleet_attempt_failures_total"
PENALTIES = "ollama_fleet_penalties_total"
POLL_DURATION = "ollama_fleet_poll_duration_seconds"
POLL_ERRORS = "ollama_fleet_poll_errors_total"
BACKEND_CHANGES = "ollama_fleet_backend_changes_total"
BUILD_INFO = "ollama_fleet_build_info"
USAGE_REQUESTS = "ollama_fleet_usage_requests_total"
USAGE_PROMPT_TOKENS = "ollama_fleet_usage_prompt_tokens_total"
USAGE_GENERATED_TOKENS = "ollama_fleet_usage_generated_tokens_total"
USAGE_SLOT_SECONDS = "ollama_fleet_usage_slot_seconds_total"
# state, computed at scrape time
BACKEND_UP = "ollama_fleet_backend_up"
BACKEND_PENALISED = "ollama_fleet_backend_penalised"
INFLIGHT = "ollama_fleet_inflight_requests"
LOADS_IN_PROGRESS = "ollama_fleet_loads_in_progress"
MODEL_RESIDENT = "ollama_fleet_model_resident"
MODEL_VRAM = "ollama_fleet_model_vram_bytes"
MODEL_ROUTABLE_BACKENDS = "ollama_fleet_model_routable_backends"
DRAINING = "ollama_fleet_draining"

# ---- label values
OTHER = "other"  # a model name no pod holds (typos, attacks): never its own series
NONE = "none"  # no backend was chosen / no routing reason (rejected before routing)
ANONYMOUS = "anonymous"  # no API key (authentication off, or none presented)

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# 1 ms (1000 tokens/s) .. 1 s (1 token/s): GPU decode speeds of small and large models
_TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1)
_POLL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSample:
    """What one finished request contributes, with labels already bounded by the caller."""

    model: str
    backend: str
    status: int
    reason: str
    duration: float
    client: str = ANONYMOUS
    ttfb: float | None = None
    attempts: int = 0
    failed_backends: tuple[str, ...] = ()
    cold_load: bool = False
    cold_load_seconds: float | None = None
    eval_count: int | None = None
    eval_duration_ns: int | None = None
    prompt_eval_count: int | None = None
    slot_wait: float | None = None
    #: usage per tenant (inference requests only): the tenant label already bounded
    usage: bool = False
    tenant: str = NONE
    prompt_tokens: int = 0
    generated_tokens: int = 0
    counted: str = NONE
    slot_seconds: float = 0.0


class BoundedLabel:
    """A label fed by clients, bounded: the first ``limit`` distinct values are their own,
    every later one is :data:`OTHER`; an empty value is :data:`NONE`."""

    def __init__(self, limit: int, longest: int = 64) -> None:
        self.limit = limit
        self.longest = longest
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value:
            return NONE
        value = value[: self.longest]
        if value in self._seen:
            return value
        if len(self._seen) < self.limit and value not in (NONE, OTHER):
            self._seen.add(value)
            return value
        return OTHER


class _StateCollector(Collector):
    """Gauges read from a fresh :class:`FleetReport` at every scrape."""

    def __init__(self, report: Callable[[], FleetReport]) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report()
        up = GaugeMetricFamily(
            BACKEND_UP, "1 when the pod answered its last polls and is routable", labels=["backend"]
        )
        penalised = GaugeMetricFamily(
            BACKEND_PENALISED,
            "1 while the pod is in fast-fail cool-down (tried only after every healthy pod)",
            labels=["backend"],
        )
        inflight = GaugeMetricFamily(
            INFLIGHT,
            "requests this replica is proxying to the pod for the model right now",
            labels=["backend", "model"],
        )
        loading = GaugeMetricFamily(
            LOADS_IN_PROGRESS,
            "1 while a cold load this replica started is waiting for its first byte",
            labels=["backend", "model"],
        )
        resident = GaugeMetricFamily(
            MODEL_RESIDENT,
            "1 when the pod's last /api/ps listed the model (or a runner it is an alias of)",
            labels=["backend", "model"],
        )
        vram = GaugeMetricFamily(
            MODEL_VRAM, "size_vram of the resident model on the pod", labels=["backend", "model"]
        )
        routable = GaugeMetricFamily(
            MODEL_ROUTABLE_BACKENDS,
            "routable pods that hold the model (installed or resident): 0 means no pod of "
            "this replica's fleet can serve it",
            labels=["model"],
        )
        holders: dict[str, int] = {}
        for pod in report.pods:
            up.add_metric([pod.name], 1.0 if pod.routable else 0.0)
            penalised.add_metric([pod.name], 1.0 if pod.penalised_for > 0 else 0.0)
            for c in pod.models:
                labels = [pod.name, c.name]
                inflight.add_metric(labels, float(c.inflight))
                loading.add_metric(labels, 1.0 if c.loading else 0.0)
                resident.add_metric(labels, 1.0 if c.resident else 0.0)
                if c.resident and not c.runner:
                    vram.add_metric(labels, float(c.size_vram))
                if c.installed or c.resident:
                    holders[c.name] = holders.get(c.name, 0) + (1 if pod.routable else 0)
        for model, n in sorted(holders.items()):
            routable.add_metric([model], float(n))
        draining = GaugeMetricFamily(DRAINING, "1 once SIGTERM was received (readiness is false)")
        draining.add_metric([], 1.0 if report.draining else 0.0)
        yield from (up, penalised, inflight, loading, resident, vram, routable, draining)


class FleetMetrics:
    """The metrics of one balancer app, in their own registry."""

    def __init__(self, report: Callable[[], FleetReport], *, usage_tenants: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: the tenant label of the usage series, bounded
        self.tenants = BoundedLabel(usage_tenants)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info(
            BUILD_INFO.removesuffix("_info"),
            "the ollama-fleet package and Python running this balancer (always 1)",
            registry=r,
        ).info({"version": package_version(), "python_version": platform.python_version()})
        by_request = ["model", "backend"]
        self.requests = Counter(
            REQUESTS,
            "proxied requests by model, backend, HTTP status and route reason "
            "(status 499: the client went away)",
            ["model", "backend", "status", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "time from receiving a request to its last byte",
            by_request,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            TIME_TO_FIRST_BYTE,
            "time from sending a request to a pod to the pod's first response byte "
            "(includes a cold load and queueing)",
            by_request,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            GENERATED_TOKENS, "tokens generated (Ollama eval_count)", by_request, registry=r
        )
        self.prompt = Counter(
            PROMPT_TOKENS,
            "prompt tokens including cached ones (Ollama prompt_eval_count)",
            by_request,
            registry=r,
        )
        self.time_per_token = Histogram(
            TIME_PER_OUTPUT_TOKEN,
            "decode time per generated token of one request: eval_duration / eval_count",
            by_request,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.client_requests = Counter(
            CLIENT_REQUESTS,
            "requests by API key name and HTTP status, refusals (401, 429, ...) included; "
            "'anonymous' without a key",
            ["client", "status"],
            registry=r,
        )
        self.slot_wait = Histogram(
            SLOT_WAIT,
            "time a request waited for a slot on the pod: total_duration - load_duration "
            "- prompt_eval_duration - eval_duration (includes templating)",
            by_request,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.cold_loads = Counter(
            COLD_LOADS,
            "requests this replica sent to a pod that had to load (or pull) the model first",
            by_request,
            registry=r,
        )
        self.cold_load_duration = Histogram(
            COLD_LOAD_DURATION,
            "time from sending a cold-load request to the pod's first byte",
            by_request,
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            RETRIES, "requests sent again to another pod after a failure", ["model"], registry=r
        )
        self.attempt_failures = Counter(
            ATTEMPT_FAILURES,
            "attempts that failed on a pod (refused, 5xx, 404, pull failure)",
            ["backend"],
            registry=r,
        )
        self.penalties = Counter(
            PENALTIES, "fast-fail cool-downs imposed on a pod", ["backend"], registry=r
        )
        self.poll_duration = Histogram(
            POLL_DURATION,
            "duration of one poll of a pod (/api/ps and /api/tags)",
            ["backend"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.poll_errors = Counter(
            POLL_ERRORS, "polls of a pod that failed", ["backend"], registry=r
        )
        self.changes = Counter(
            BACKEND_CHANGES,
            "fleet changes seen: joined, left, up, down, loaded, unloaded",
            ["kind"],
            registry=r,
        )
        by_tenant = ["client", "tenant"]
        self.usage_requests = Counter(
            USAGE_REQUESTS,
            "inference requests by API key and tenant header (usage per tenant)",
            by_tenant,
            registry=r,
        )
        self.usage_prompt = Counter(
            USAGE_PROMPT_TOKENS,
            "prompt tokens by API key and tenant header; counted: reported (the answer's "
            "figures) or chunks (a stream without figures: the balancer's estimate)",
            [*by_tenant, "counted"],
            registry=r,
        )
        self.usage_generated = Counter(
            USAGE_GENERATED_TOKENS,
            "generated tokens by API key and tenant header; counted: reported (the answer's "
            "figures) or chunks (a stream without figures: chunks relayed)",
            [*by_tenant, "counted"],
            registry=r,
        )
        self.usage_slot_seconds = Counter(
            USAGE_SLOT_SECONDS,
            "seconds requests held a pod's slot (send to the answer's end), by API key and "
            "tenant header",
            by_tenant,
            registry=r,
        )
        r.register(_StateCollector(report))

    def observe_request(self, s: RequestSample) -> None:
        labels = (s.model, s.backend)
        self.requests.labels(s.model, s.backend, str(s.status), s.reason).inc()
        self.client_requests.labels(s.client, str(s.status)).inc()
        self.duration.labels(*labels).observe(s.duration)
        if s.ttfb is not None:
            self.ttfb.labels(*labels).observe(s.ttfb)
        if s.eval_count is not None:
            self.generated.labels(*labels).inc(s.eval_count)
            if s.eval_duration_ns and s.eval_count > 0:
                per_token = s.eval_duration_ns / 1e9 / s.eval_count
                self.time_per_token.labels(*labels).observe(per_token)
        if s.prompt_eval_count is not None:
            self.prompt.labels(*labels).inc(s.prompt_eval_count)
        if s.slot_wait is not None:
            self.slot_wait.labels(*labels).observe(s.slot_wait)
        if s.cold_load:
            self.cold_loads.labels(*labels).inc()
        if s.cold_load_seconds is not None:
            self.cold_load_duration.labels(*labels).observe(s.cold_load_seconds)
        if s.attempts > 1:
            self.retries.labels(s.model).inc(s.attempts - 1)
        for backend in s.failed_backends:
            self.attempt_failures.labels(backend).inc()
        if s.usage:
            self.usage_requests.labels(s.client, s.tenant).inc()
            self.usage_slot_seconds.labels(s.client, s.tenant).inc(s.slot_seconds)
            if s.counted != NONE:
                self.usage_prompt.labels(s.client, s.tenant, s.counted).inc(s.prompt_tokens)
                self.usage_generated.labels(s.client, s.tenant, s.counted).inc(s.generated_tokens)

    def observe_poll(self, backend: str, duration: float, error: bool) -> None:
        self.poll_duration.labels(backend).observe(duration)
        if error:
            self.poll_errors.labels(backend).inc()

    def observe_change(self, kind: str) -> None:
        self.changes.labels(kind).inc()

    def observe_penalty(self, backend: str) -> None:
        self.penalties.labels(backend).inc()


def package_version() -> str:
    """The installed ollama-fleet version (``unknown`` when run from a bare source tree)."""
    try:
        return metadata.version("ollama-fleet")
    except metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------- wait queue and demand
QUEUE_LENGTH = "ollama_fleet_queue_length"
QUEUE_WAIT = "ollama_fleet_queue_wait_seconds"
QUEUE_SHED = "ollama_fleet_queue_shed_total"
QUEUE_EXPECTED_WAIT = "ollama_fleet_queue_expected_wait_seconds"
MODEL_DEMAND = "ollama_fleet_model_demand"
MODEL_SLOTS = "ollama_fleet_model_slots"
FLEET_DEMAND_RATIO = "ollama_fleet_demand_capacity_ratio"

#: Seconds a request may wait in the balancer: sub-second to minutes.
_QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True, slots=True)
class DemandView:
    """Per model: requests in flight (fleet-wide with shared state), waiting here, warm slots,
    and a newcomer's expected wait; the figures autoscalers and the operator act on."""

    inflight: Mapping[str, int]
    queued: Mapping[tuple[str, str], int]  # (model, class) -> waiting
    slots: Mapping[str, int]  # model -> parallel slots on pods where it is resident
    expected_wait: Mapping[str, float]

    def demand(self) -> dict[str, int]:
        out = dict(self.inflight)
        for (model, _), n in self.queued.items():
            out[model] = out.get(model, 0) + n
        return {m: n for m, n in out.items() if n or m in self.slots}


class _DemandCollector(Collector):
    def __init__(self, view: Callable[[], DemandView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        length = GaugeMetricFamily(
            QUEUE_LENGTH,
            "requests waiting in this balancer for a slot, by model and class",
            labels=["model", "class"],
        )
        for (model, cls), n in sorted(v.queued.items()):
            length.add_metric([model, cls], float(n))
        expected = GaugeMetricFamily(
            QUEUE_EXPECTED_WAIT,
            "seconds a request arriving now would wait for a slot (0 when one is free)",
            labels=["model"],
        )
        for model, seconds in sorted(v.expected_wait.items()):
            expected.add_metric([model], seconds)
        demand = v.demand()
        per_model = GaugeMetricFamily(
            MODEL_DEMAND,
            "this replica's requests in flight plus waiting, by model: summed over replicas, "
            "the fleet's demand (the autoscaling signal)",
            labels=["model"],
        )
        slots = GaugeMetricFamily(
            MODEL_SLOTS,
            "parallel slots of the warm copies of a model, fleet-wide",
            labels=["model"],
        )
        for model in sorted(set(demand) | set(v.slots)):
            per_model.add_metric([model], float(demand.get(model, 0)))
            slots.add_metric([model], float(v.slots.get(model, 0)))
        capacity = sum(v.slots.values())
        ratio = GaugeMetricFamily(
            FLEET_DEMAND_RATIO,
            "this replica's demand over the fleet's warm slots: summed over replicas, the "
            "fleet's demand/capacity (above 1 requests wait; scale the GPU pool)",
        )
        total = float(sum(demand.values()))
        ratio.add_metric([], total / capacity if capacity else total)
        yield from (length, expected, per_model, slots, ratio)


class QueueMetrics:
    """The wait queue's counters and the demand gauges, in the balancer's registry."""

    def __init__(self, registry: CollectorRegistry, view: Callable[[], DemandView]) -> None:
        self.wait = Histogram(
            QUEUE_WAIT,
            "time a request waited in the balancer before a pod took it (or it left the queue), "
            "by outcome: dispatched, expired, shed, cancelled, rejected",
            ["model", "class", "outcome"],
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        self.shed = Counter(
            QUEUE_SHED,
            "requests refused by the wait queue (429): full, or waited the maximum",
            ["model", "class", "reason"],
            registry=registry,
        )
        registry.register(_DemandCollector(view))

    def left_queue(self, model: str, cls: str, outcome: str, waited: float) -> None:
        self.wait.labels(model, cls, outcome).observe(waited)
        if outcome in ("shed", "expired"):
            self.shed.labels(model, cls, "full" if outcome == "shed" else "expired").inc()


# --------------------------------------------------------------- the scheduler (reclaim)
CLASS_SEATS = "ollama_fleet_class_seats"
CLASS_HELD = "ollama_fleet_class_held"
CLASS_BORROWED = "ollama_fleet_class_borrowed"
CLASS_LENT = "ollama_fleet_class_lent"
PREEMPTIONS = "ollama_fleet_preemptions_total"
RESUMES = "ollama_fleet_resumes_total"
PREEMPTION_WASTE = "ollama_fleet_preemption_waste_seconds_total"
ESTIMATE_ERROR = "ollama_fleet_queue_estimate_error_seconds"

_ERROR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _SharesCollector(Collector):
    """Per model and class, the seats of the last plan of this replica's scheduler."""

    def __init__(self, shares: Callable[[], Mapping[str, Sequence[Any]]]) -> None:
        self._shares = shares

    def collect(self) -> Iterator[Metric]:
        families = {
            "nominal": GaugeMetricFamily(
                CLASS_SEATS,
                "slots of a model's pool a class owns (its nominal share), as this replica's "
                "scheduler last planned",
                labels=["model", "class"],
            ),
            "held": GaugeMetricFamily(
                CLASS_HELD,
                "slots of a model's pool a class holds, fleet-wide",
                labels=["model", "class"],
            ),
            "borrowed": GaugeMetricFamily(
                CLASS_BORROWED,
                "slots a class holds beyond its own seats (borrowed from idle classes)",
                labels=["model", "class"],
            ),
            "lent": GaugeMetricFamily(
                CLASS_LENT, "seats of a class held by other classes", labels=["model", "class"]
            ),
        }
        for model, shares in sorted(self._shares().items()):
            for share in shares:
                for field, family in families.items():
                    family.add_metric([model, str(share.cls)], float(getattr(share, field)))
        yield from families.values()


class SchedulerMetrics:
    """Class shares, preemptions, resumes, their waste and the wait estimates' error."""

    def __init__(
        self, registry: CollectorRegistry, shares: Callable[[], Mapping[str, Sequence[Any]]]
    ) -> None:
        self.preemptions = Counter(
            PREEMPTIONS,
            "slots this replica took back for a waiting request, by the victim's class and why "
            "(class-share: its class was owed seats; tenant-share: its tenant was owed its share)",
            ["model", "class", "reason"],
            registry=registry,
        )
        self.resumes = Counter(
            RESUMES,
            "preempted requests this replica relayed, by what became of them: resumed (the "
            "continuation served the rest), finished (the answer ended before the cut), failed",
            ["model", "outcome"],
            registry=registry,
        )
        self.waste = Counter(
            PREEMPTION_WASTE,
            "slot-seconds preemption cost: from the cut to the victim's slot being free, plus "
            "the continuation's prompt reading (what a resume on another slot reads again)",
            ["model"],
            registry=registry,
        )
        self.estimate_error = Histogram(
            ESTIMATE_ERROR,
            "|actual − estimated| wait of requests when a pod took them (the admission "
            "estimate's error), by class and whether the estimate was over or under",
            ["class", "direction"],
            buckets=_ERROR_BUCKETS,
            registry=registry,
        )
        registry.register(_SharesCollector(shares))

    def estimated(self, cls: str, estimate: float, waited: float) -> None:
        direction = "over" if estimate >= waited else "under"
        self.estimate_error.labels(cls, direction).observe(abs(waited - estimate))
