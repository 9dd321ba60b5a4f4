"""One worker per ModelPool: observe -> plan -> hand actions to the pod lanes -> report.

Pools never wait for each other: each has its own worker task, and what Ollama
needs serialised (one load at a time per pod) is serialised per pod in
:mod:`.lanes`, shared by every pool.  A worker's cycle:

1. observe the selected pods (``/api/tags``, ``/api/ps``) and, for models on no
   pod yet, ask the registry for their size (:mod:`.manifests`);
2. plan on that observation *as it will be* once the actions already handed out
   succeed (:func:`.plan.anticipate`), so nothing is asked twice and the room of
   a running load is not given away;
3. hand the new actions to the lanes and write status (rate-limited);
4. wait for: an action of the pool finishing (a finished pull lets the lanes
   start the load waiting for it at once; the worker re-plans), a spec or pod
   change, a pinned copy that drifted (``/api/ps`` of the pool's pods every
   ``pin_check_seconds``), an autoscaled model's count changing with the
   balancer's demand (:meth:`PoolWorker.on_demand`, after every poll of the
   :class:`DemandSource`), or the resync timer.

Autoscaled models (:mod:`.scaling`) are decided before each plan and after each
demand poll; their decision's memory is part of the status, so a restarted
operator resumes it.  Unknown demand holds every count where it is.

A failed action fails only what depends on it (the lanes skip a load whose pull
failed); everything else goes on.  A verdict (see :mod:`.verdicts`) blocks its
model until the spec changes; a transient failure is retried after a growing
pause.  Claims are recorded in :attr:`Shared.claims` the moment a plan makes
them (no ``await`` in between), so two pools planning concurrently never give
the same VRAM away twice.

Status keeps ``owned`` (the pool's ledger) to what actually happened: a claim
counts once its action succeeded.  Finalizers: only ``prune: true`` pools carry
:data:`.kube.FINALIZER`; their deletion waits for the prune, any other pool's
deletion never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from .autoscale import Scaled
from .demand import UNCONFIGURED, DemandReading
from .kube import FINALIZER
from .lanes import Lanes, Ticket
from .manifests import ManifestCache
from .observe import PodInfo, observe, residents, select
from .plan import Plan, anticipate, model_size, plan, record, revert, serves
from .recorder import EventSink
from .scaling import ScaleState, initial_state, state_from_status, step
from .settings import OperatorSettings
from .spec import PoolSpec, SpecError, parse_pool_spec
from .state import (
    LEDGER_ANNOTATION,
    ActionKind,
    Observation,
    Owned,
    Problem,
    ledger_of,
    ledger_to_annotation,
    merge_claims,
)
from .status import build_status, invalid_spec_status
from .verdicts import blocked_problem

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from .spans import ReconcileSpans

__all__ = [
    "DemandSource",
    "KubeWrites",
    "PoolKey",
    "PoolWorker",
    "ReconcileObserver",
    "Shared",
    "StatusWriter",
]

log = logging.getLogger(__name__)

PoolKey = tuple[str, str]  # (namespace, name)
Slot = tuple[str, str, str]

_DONE_REASON = {
    ActionKind.PULL: "Pulled",
    ActionKind.LOAD: "Loaded",
    ActionKind.UNLOAD: "Unloaded",
    ActionKind.DELETE: "Deleted",
}
#: Outcomes that are no failure of the action itself (nobody wanted it any more).
_NOT_FAILURES = ("withdrawn", "operator stopping", "cancelled")


class KubeWrites(Protocol):
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    async def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None: ...
    async def set_finalizer(
        self, namespace: str, name: str, finalizers: list[str], present: bool
    ) -> None: ...


class DemandSource(Protocol):
    """The balancer's averaged demand (modelpool_operator.demandfeed implements it)."""

    def reading(self) -> DemandReading: ...


class ReconcileObserver(Protocol):
    """What a worker tells metrics about each pass (modelpool_operator.metrics implements it)."""

    def reconciled(self, key: PoolKey, status: Mapping[str, Any] | None, seconds: float) -> None:
        """A pass ended; ``status`` is what it wrote (None: none, e.g. while deleting)."""

    def reconcile_failed(self, seconds: float) -> None: ...


@dataclass
class Shared:
    """What every pool worker of one operator process shares."""

    settings: OperatorSettings
    session: aiohttp.ClientSession
    lanes: Lanes
    manifests: ManifestCache
    kube: KubeWrites
    events: EventSink
    #: the latest body of every pool the operator sees
    pools: Callable[[], Mapping[PoolKey, Mapping[str, Any]]]
    #: the pods of a namespace
    pods: Callable[[str], Sequence[PodInfo]]
    #: every worker's claims as its last plan made them (ahead of its status)
    claims: dict[PoolKey, tuple[Owned, ...]] = field(default_factory=dict)
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    #: told about every pass of every worker (metrics)
    observer: ReconcileObserver | None = None
    #: the balancer's demand, for autoscaled models (None: not configured)
    demand: DemandSource | None = None
    #: makes the reconciles' spans (None: tracing is off)
    tracer: Tracer | None = None

    def others(self, key: PoolKey) -> dict[tuple[str, str], Owned]:
        """Claims of the other pools of the namespace (memory first, then their status)."""
        namespace, name = key
        ledgers = []
        for other, body in self.pools().items():
            if other[0] != namespace or other[1] == name:
                continue
            ledger = self.claims.get(other)
            ledgers.append(ledger if ledger is not None else ledger_of(body))
        return merge_claims(ledgers)


class StatusWriter:
    """Writes a pool's status (and its ledger annotation) at most every ``interval``
    seconds, always the latest.  The ledger goes first: it is what prune relies on."""

    def __init__(
        self,
        kube: KubeWrites,
        key: PoolKey,
        interval: float,
        ledger_text: str | None = None,
    ) -> None:
        self.kube = kube
        self.key = key
        self.interval = interval
        self.latest: dict[str, Any] | None = None
        self.written: dict[str, Any] | None = None
        self.ledger: str | None = None
        #: the annotation as the pool carries it (None: not there yet)
        self.ledger_written = ledger_text
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def update(self, status: dict[str, Any], ledger: str | None = None) -> None:
        self.latest = status
        if ledger is not None:
            self.ledger = ledger
        if status != self.written or self.ledger != self.ledger_written:
            self._dirty.set()
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status, ledger = self.latest, self.ledger
            try:
                if ledger is not None and ledger != self.ledger_written:
                    await self.kube.patch_annotations(*self.key, {LEDGER_ANNOTATION: ledger})
                    self.ledger_written = ledger
                if status is not None and status != self.written:
                    await self.kube.patch_status(*self.key, status)
                    self.written = status
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    return  # the pool is gone
                log.warning("status of %s/%s: %s", *self.key, exc)
                self._dirty.set()
            await asyncio.sleep(max(self.interval, 0.05))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PoolWorker:
    def __init__(self, shared: Shared, key: PoolKey) -> None:
        self.shared = shared
        self.key = key
        self.wake = asyncio.Event()
        settings = shared.settings
        body = shared.pools().get(key) or {}
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        self.writer = StatusWriter(
            shared.kube,
            key,
            settings.watch.status_interval_seconds,
            annotations.get(LEDGER_ANNOTATION),
        )
        self.generation: Any = object()  # never equal to a real generation
        #: claims as planned (ahead of the pods); what other pools plan around
        self.ledger: tuple[Owned, ...] | None = None
        #: claims whose actions succeeded: status.owned, what prune may remove
        self.actual: tuple[Owned, ...] = ()
        self.blocked: dict[str, Problem] = {}
        self.learned: dict[str, int] = {}
        self.inflight: dict[Slot, Ticket] = {}
        self.finished: list[Ticket] = []
        self.failures: dict[Slot, str] = {}
        self.cooldown: dict[Slot, tuple[float, float]] = {}
        self.selected: frozenset[str] = frozenset()
        self.spec: PoolSpec | None = None
        self.obs: Observation | None = None
        self.plan: Plan | None = None
        self.status: dict[str, Any] | None = None
        self.reported: set[tuple[str, str]] = set()
        #: autoscaled models' decisions, by model key
        self.scaling: dict[str, ScaleState] = {}
        self.reading: DemandReading = UNCONFIGURED
        self.demand_known: bool | None = None
        self.last_full = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.spans: ReconcileSpans | None = None
        #: the span of the pass under way (None between passes, or tracing off)
        self.span: Span | None = None
        if shared.tracer is not None:
            from .spans import ReconcileSpans

            self.spans = ReconcileSpans(shared.tracer, *key)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def poke(self) -> None:
        self.wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self.inflight.values()):
            self.shared.lanes.withdraw(t, self.key)
        await self.writer.close()
        if self.spans is not None:
            self.spans.close()

    def _body(self) -> Mapping[str, Any] | None:
        return self.shared.pools().get(self.key)

    async def _run(self) -> None:
        resync = False
        while True:
            body = self._body()
            if body is None:
                return
            try:
                if (body.get("metadata") or {}).get("deletionTimestamp"):
                    await self._finalize(body)
                    return
                await self._ensure_finalizer(body)
                begin = time.monotonic()
                if self.spans is not None:
                    self.span = self.spans.reconcile(
                        (body.get("metadata") or {}).get("generation"), resync
                    )
                try:
                    await self.cycle(body, resync=resync)
                except Exception as exc:
                    if self.spans is not None and self.span is not None:
                        self.spans.failed(self.span, exc)
                    if self.shared.observer is not None:
                        self.shared.observer.reconcile_failed(time.monotonic() - begin)
                    raise
                finally:
                    if self.span is not None:
                        self.span.end()
                        self.span = None
                if self.shared.observer is not None:
                    self.shared.observer.reconciled(self.key, self.status, time.monotonic() - begin)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Keep going: the next trigger or resync tries again.
                log.exception("reconcile of %s/%s failed", *self.key)
            resync = await self._wait()

    # -- one pass ------------------------------------------------------------------------
    async def cycle(
        self, body: Mapping[str, Any], *, resync: bool = False, deleting: bool = False
    ) -> Plan | None:
        settings = self.shared.settings
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        previous = dict(body.get("status") or {})
        if self.ledger is None:
            self.ledger = self.actual = ledger_of(body)
        if generation != self.generation:
            first = self.status is None
            self.generation = generation
            # A new spec: verdicts and back-offs are about the old one; what has not
            # started yet is re-planned from scratch.
            self.blocked.clear()
            self.failures.clear()
            self.cooldown.clear()
            self.learned.clear()
            if not first:
                for slot, t in list(self.inflight.items()):
                    if not t.running:
                        self.shared.lanes.withdraw(t, self.key)
                        del self.inflight[slot]
                        self.ledger = revert(self.actual, self.ledger or (), [t.action])
        self.last_full = time.monotonic()
        self._drain(body)
        try:
            spec = parse_pool_spec(body.get("spec") or {})
        except SpecError as exc:
            status = invalid_spec_status(str(exc), generation, self.status or previous, _now())
            self._report(body, status, [("InvalidSpec", str(exc))], resync)
            self.status = status
            self.writer.update(status, ledger_to_annotation(self.actual))
            return None
        if deleting:
            spec = replace(spec, models=(), keys=frozenset(), prune=True)
        if spec.default_vram_bytes is None and settings.sizing.default_vram_bytes is not None:
            spec = replace(spec, default_vram_bytes=settings.sizing.default_vram_bytes)
        pods = select(self.shared.pods(self.key[0]), spec.selector)
        self.selected = frozenset(p.name for p in pods)
        async with self.shared.gate:
            obs = await observe(
                self.shared.session, pods, timeout=settings.actions.ollama_timeout_seconds
            )
            sizes = await self._sizes(spec, obs)
        if self.spans is not None and self.span is not None:
            self.spans.observed(self.span, obs)
        self._drain(body)  # actions that finished while we observed
        sizes.update(self.learned)
        pending = [t.action for t in self.inflight.values()]
        scaled, _ = self._rescale(spec, body)
        result = plan(
            spec,
            anticipate(obs, pending, sizes),
            self.ledger,
            self.shared.others(self.key),
            sizes=sizes,
            blocked=self.blocked,
            scaled=scaled,
            release_keep_alive=settings.demand.release_keep_alive_seconds,
        )
        # From here to the submit, no await: the claims are taken atomically.
        clock = time.monotonic()
        fresh = [a for a in result.actions if a.slot not in self.inflight]
        held = [a for a in fresh if self.cooldown.get(a.slot, (0.0, 0.0))[0] > clock]
        # What waits for a held pull waits with it (a load without its pull would fail).
        waiting = {(a.pod, a.model) for a in held if a.kind is ActionKind.PULL}
        held += [a for a in fresh if a not in held and (a.pod, a.model) in waiting]
        # A failure is news while its action is still wanted, not after.
        wanted = {a.slot for a in result.actions} | set(self.inflight)
        self.failures = {k: v for k, v in self.failures.items() if k in wanted}
        self.ledger = revert(self.actual, result.ledger, held)
        self.shared.claims[self.key] = self.ledger
        starting = [a for a in fresh if a not in held]
        for a, t in zip(
            starting, self.shared.lanes.submit_all(starting, self.key, self._finished), strict=True
        ):
            self.inflight[a.slot] = t
        if self.spans is not None and self.span is not None:
            self.spans.planned(self.span, result, len(starting))
            for a in starting:
                self.spans.action_started(self.span, a)
        self.actual = revert(
            self.actual, self.ledger, [t.action for t in self.inflight.values()] + held
        )
        self.spec, self.obs, self.plan = spec, obs, result
        if deleting:
            return result
        status = self._build_status(previous)
        problems = [(p.reason, p.message) for p in result.problems]
        self._report(body, status, problems, resync)
        self.status = status
        self.writer.update(status, ledger_to_annotation(self.actual))
        return result

    # -- autoscaling -------------------------------------------------------------------------
    def _rescale(self, spec: PoolSpec, body: Mapping[str, Any]) -> tuple[dict[str, Scaled], bool]:
        """Decide every autoscaled model's count from the latest demand (an Event for each
        change); the decisions for the plan and whether any count or memory changed."""
        models = [m for m in spec.models if m.autoscale is not None]
        keys = {m.key for m in models}
        for key in list(self.scaling):
            if key not in keys:
                del self.scaling[key]  # no longer autoscaled: a fixed count again
        if not models:
            return {}, False
        reading = self.shared.demand.reading() if self.shared.demand is not None else UNCONFIGURED
        events = self.shared.events
        # An Event when demand becomes unknown and when it is back (not before the first poll).
        if not reading.pending:
            if not reading.known and self.demand_known is not False:
                events.post(
                    body, "Warning", "DemandUnknown", f"{reading.error}: autoscaled counts hold"
                )
            elif reading.known and self.demand_known is False:
                events.post(body, "Normal", "DemandKnown", "the balancer's demand answers again")
            self.demand_known = reading.known
        self.reading = reading
        previous = {
            str(item.get("name")): item
            for item in ((self.status or body.get("status") or {}).get("models") or ())
            if isinstance(item, Mapping)
        }
        loaded = {o.model: 0 for o in self.actual}
        for o in self.actual:
            loaded[o.model] += o.loaded
        now = time.time()
        out: dict[str, Scaled] = {}
        changed = False
        for m in models:
            auto = m.autoscale
            assert auto is not None
            state = self.scaling.get(m.key)
            if state is None:
                raw = (previous.get(m.name) or {}).get("autoscale")
                state = state_from_status(raw) or initial_state(auto, loaded.get(m.key, 0))
            new, change = step(auto, state, reading.of(m.key), now, unknown=reading.error)
            if change is not None:
                kind = "ScaledUp" if change.up else "ScaledDown"
                events.post(body, "Normal", kind, f"{m.name}: {change.reason}")
                log.info("%s/%s: %s: %s", *self.key, m.name, change.reason)
            changed = changed or new.memory != state.memory or m.key not in self.scaling
            self.scaling[m.key] = new
            out[m.key] = Scaled(new.replicas, new.demand, auto.target_requests)
        return out, changed

    def on_demand(self) -> None:
        """A new demand poll: re-decide; a changed count re-plans at once, a changed memory
        (a scale-down's wait starting or ending) is written to status."""
        spec, body = self.spec, self._body()
        if spec is None or body is None or not any(m.autoscale for m in spec.models):
            return
        before = {k: s.replicas for k, s in self.scaling.items()}
        known = self.reading.known
        _, changed = self._rescale(spec, body)
        if {k: s.replicas for k, s in self.scaling.items()} != before:
            self.poke()
        elif changed or known != self.reading.known:
            self._refresh_status()

    async def _sizes(self, spec: PoolSpec, obs: Observation) -> dict[str, int]:
        """Registry sizes of the models no pod has yet (verdicts go to ``blocked``)."""
        sizes = dict(self.learned)
        wanted = {
            m.key: m.name
            for m in spec.models
            if m.key not in self.blocked and m.key not in sizes and model_size(obs, m.key) is None
        }
        if not wanted:
            return sizes
        for key, found in (await self.shared.manifests.lookup_all(wanted)).items():
            if found.size:
                sizes[key] = found.size
            elif found.verdict:
                self.blocked[key] = blocked_problem(found.verdict, wanted[key], key, found.detail)
        return sizes

    def _finished(self, ticket: Ticket) -> None:
        self.finished.append(ticket)
        self.wake.set()

    def _drain(self, body: Mapping[str, Any]) -> None:
        """Take in the outcomes of finished actions."""
        done, self.finished = self.finished, []
        # A ticket can also end without telling us (withdrawn after we stopped watching it).
        done += [t for t in self.inflight.values() if t.done and t not in done]
        settings = self.shared.settings
        for t in done:
            o, a = t.outcome, t.action
            if o is None:
                continue
            if self.inflight.get(a.slot) is t:
                del self.inflight[a.slot]
            if self.spans is not None:
                self.spans.action_ended(o)
            if o.ok:
                self.actual = record(self.actual, a)
                self.failures.pop(a.slot, None)
                self.cooldown.pop(a.slot, None)
                released = a.kind is ActionKind.LOAD and a.reason.startswith("release")
                reason = "Released" if released else _DONE_REASON[a.kind]
                self.shared.events.post(body, "Normal", reason, a.describe())
                continue
            self.ledger = revert(self.actual, self.ledger or (), [a])
            self.shared.claims[self.key] = self.ledger
            if o.error.startswith(_NOT_FAILURES):
                continue
            if o.attempts == 0:
                # Skipped because what it needed failed (its pull, its pod): that failure
                # is the one reported; this action is planned again with it.
                continue
            reason = f"{a.kind.value.capitalize()}Failed"
            self.shared.events.post(body, "Warning", reason, f"{a.describe()}: {o.error}")
            if o.size:
                # The pull told the size: the next plan places (or refuses) it knowingly.
                self.learned[a.model] = o.size
            elif o.verdict:
                self.blocked[a.model] = blocked_problem(o.verdict, a.name, a.model, o.error)
            else:
                self.failures[a.slot] = f"{a.describe()}: {o.error}"
                _, pause = self.cooldown.get(a.slot, (0.0, 0.0))
                pause = min(max(5.0, pause * 2, settings.actions.backoff_seconds * 5),
                            settings.watch.resync_seconds)  # fmt: skip
                self.cooldown[a.slot] = (time.monotonic() + pause, pause)

    def _build_status(self, previous: Mapping[str, Any]) -> dict[str, Any]:
        assert self.spec is not None and self.obs is not None and self.plan is not None
        gen = self.generation
        return build_status(
            spec=self.spec,
            generation=gen if isinstance(gen, int) else None,
            obs=self.obs,
            plan=self.plan,
            ledger=self.actual,
            failures=list(self.failures.values()),
            previous_conditions=(self.status or previous).get("conditions"),
            now=_now(),
            activities=self.shared.lanes.activities(self.key),
            scaling=self.scaling,
            demand=self.reading,
        )

    def _refresh_status(self) -> None:
        """Progress of running work into status, without observing again."""
        if self.spec is not None and self.obs is not None and self.plan is not None:
            self.status = self._build_status(self.status or {})
            self.writer.update(self.status)

    def _report(
        self,
        body: Mapping[str, Any],
        status: Mapping[str, Any],
        problems: Sequence[tuple[str, str]],
        resync: bool,
    ) -> None:
        """Events: a problem when it appears and again at each resync while it lasts (the
        recorder aggregates the repeats into one Event whose count rises); Recovered and
        Ready when they happen."""
        events = self.shared.events
        current = set(problems)
        for reason, message in problems:
            if resync or (reason, message) not in self.reported:
                events.post(body, "Warning", reason, message)
        if self.reported and not current:
            events.post(body, "Normal", "Recovered", "no longer degraded")
        self.reported = current
        before = _condition(self.status or body.get("status") or {}, "Ready")
        now = _condition(status, "Ready")
        if now.get("status") == "True" and before.get("status") != "True":
            events.post(body, "Normal", "Ready", str(now.get("message") or ""))

    # -- waiting -------------------------------------------------------------------------
    def _pulling(self) -> bool:
        return any(t.running and t.action.kind is ActionKind.PULL for t in self.inflight.values())

    async def _wait(self) -> bool:
        """Until something to do; True when it is the resync timer."""
        settings = self.shared.settings
        deadline = self.last_full + settings.watch.resync_seconds
        next_pin = time.monotonic() + settings.watch.pin_check_seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                return True
            # A transient failure's pause ending is a reason to try again before the resync.
            retry = min((u for u, _ in self.cooldown.values() if u > now), default=deadline)
            if retry <= now:
                return False
            timeout = min(deadline, next_pin, retry) - now
            if self._pulling():
                timeout = min(timeout, max(settings.watch.status_interval_seconds, 0.5))
            try:
                await asyncio.wait_for(self.wake.wait(), max(timeout, 0.0))
                self.wake.clear()
                return False
            except TimeoutError:
                pass
            if retry < deadline and time.monotonic() >= retry:
                return False
            if self._pulling():
                self._refresh_status()
            if time.monotonic() >= next_pin:
                next_pin = time.monotonic() + settings.watch.pin_check_seconds
                if await self._pins_drifted():
                    return False

    async def _pins_drifted(self) -> bool:
        """Whether a copy this pool pinned is gone or no longer what the pool asked for."""
        spec, obs = self.spec, self.obs
        if spec is None or obs is None:
            return False
        busy = {(t.action.pod, t.action.model) for t in self.inflight.values()}
        claims: dict[str, list[str]] = {}
        for o in self.actual:
            if o.loaded and (o.pod, o.model) not in busy and spec.model(o.model) is not None:
                claims.setdefault(o.pod, []).append(o.model)
        urls = {p.name: p.url for p in obs.pods if p.available and p.name in claims}
        if not urls:
            return False
        timeout = self.shared.settings.actions.ollama_timeout_seconds
        names = list(urls)
        answers = await asyncio.gather(
            *(residents(self.shared.session, urls[n], timeout=timeout) for n in names)
        )
        for pod, resident in zip(names, answers, strict=True):
            if resident is None:
                continue  # not answering: the next resync reports it
            for key in claims[pod]:
                m = spec.model(key)
                if m is not None and not serves(m, resident.get(key)):
                    log.info("%s/%s: %s on %s drifted; reconciling", *self.key, m.name, pod)
                    return True
        return False

    # -- finalizer ------------------------------------------------------------------------
    async def _ensure_finalizer(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        want = (body.get("spec") or {}).get("prune") is True
        if want != (FINALIZER in finalizers):
            try:
                await self.shared.kube.set_finalizer(*self.key, finalizers, want)
            except Exception as exc:  # a concurrent change (422): the next pass sees it
                log.info("finalizer of %s/%s: %s", *self.key, exc)

    async def _finalize(self, body: Mapping[str, Any]) -> None:
        """A deleted pool: prune first if it is ``prune: true``, then let it go."""
        meta = body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        if FINALIZER not in finalizers:
            return
        if (body.get("spec") or {}).get("prune") is True:
            for _ in range(3):
                result = await self.cycle(body, deleting=True)
                if result is None:
                    break
                tickets = list(self.inflight.values())
                if not tickets and result.empty:
                    break
                await asyncio.gather(*(t.future for t in tickets))
                self._drain(body)
                body = self._body() or body
            left = sorted({o.pod for o in self.actual})
            if left:
                # Pods that do not answer keep what the pool put there; do not block the
                # deletion forever on them, but say so.
                self.shared.events.post(
                    body,
                    "Warning",
                    "PruneIncomplete",
                    f"could not prune on unreachable pods: {', '.join(left)}",
                )
        await self.shared.kube.set_finalizer(*self.key, finalizers, False)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return {}


def _now() -> datetime:
    return datetime.now(UTC)
