"""ModelPool status and conditions from one reconcile (pure).

Conditions follow the Kubernetes API conventions (metav1.Condition: a list keyed
on ``type``, each with ``status``, ``reason``, ``message``,
``observedGeneration`` and ``lastTransitionTime``): ``Ready`` (every listed model is
pulled and loaded as declared), ``Reconciling`` (work is queued or running: its
message says which and how far a download got; the kstatus name, so tools that
read kstatus understand it), and ``Degraded`` (something needs a human: a pod
that does not answer, not enough VRAM or pods, a model too large for any pod, a
model the registry refuses, an invalid spec).  ``lastTransitionTime`` only moves
when a condition's status flips, so watchers see real transitions.

Pools with autoscaled models get a fourth condition, ``ScalingActive`` (the
HorizontalPodAutoscaler's name): True while the balancer's demand is known, False
with why while it is not (every autoscaled count then holds).  Per autoscaled
model, ``models[].autoscale`` carries the demand, the count decided, the reason of
the last change and the decision's memory (:mod:`.scaling`); ``scaledReplicas``
and ``demand`` sum them up for ``kubectl get``.

A replica counts as loaded only while it is what the pool asked for: pinned
(when the pool pins) and with the pool's ``num_ctx``.  A copy a client reloaded
with other options, or whose pin a client's keep_alive replaced, is reported as
not loaded, with why, until the operator has pinned it again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .demand import DemandReading
from .plan import Plan, format_bytes, serves
from .scaling import ScaleState, state_to_status
from .spec import ModelSpec, PoolSpec
from .state import Activity, Observation, Owned, Problem, Resident, ledger_to_status

__all__ = ["build_status", "describe_activity", "invalid_spec_status", "merge_conditions"]


#: metav1.Condition's cap on a message.
MESSAGE_LIMIT = 32768
_QUIET = {
    ("Reconciling", False): "no pulls, loads, unloads or deletes queued or running",
    ("Degraded", False): "no problems",
}


def _condition(
    kind: str, ok: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """A condition as metav1.Condition has it: every field there, the message capped.

    The message is never empty: kube-apiserver 1.20 turns an empty string in a custom
    resource into null, which the schema (message: string, required) then refuses.
    """
    message = message or _QUIET.get((kind, ok), reason)
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 20] + " ... (truncated)"
    cond: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    current: Sequence[dict[str, Any]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Stamp ``lastTransitionTime``: kept from ``previous`` unless the status flipped."""
    before = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for cond in current:
        prev = before.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        last = prev.get("lastTransitionTime") if same and prev is not None else None
        out.append({**cond, "lastTransitionTime": last or stamp})
    return out


def build_status(
    *,
    spec: PoolSpec,
    generation: int | None,
    obs: Observation,
    plan: Plan,
    ledger: Iterable[Owned],
    failures: Sequence[str] = (),
    previous_conditions: Iterable[Mapping[str, Any]] | None = None,
    now: datetime,
    activities: Sequence[Activity] = (),
    scaling: Mapping[str, ScaleState] | None = None,
    demand: DemandReading | None = None,
) -> dict[str, Any]:
    """The whole ``status`` for the pool, from the last observation and plan.

    ``plan`` is the plan made from ``obs``: its problems say why it cannot finish;
    ``activities`` are the actions handed out and not finished (queued or running),
    ``plan.actions`` not among them are pending too; ``scaling`` the autoscaled models'
    decisions (by model key) and ``demand`` the reading they were made from.
    """
    scaling = scaling or {}
    ledger = tuple(ledger)
    loaded_by_me = {(o.pod, o.model) for o in ledger if o.loaded}
    avail = [p for p in obs.pods if p.available]
    problem_models = {p.model for p in plan.problems if p.model}
    models = []
    not_ready: list[str] = []
    drifts: list[str] = []
    satisfied = 0
    loaded_total = desired_total = 0
    scaled_loaded = scaled_desired = 0
    demand_total = 0.0
    for m in spec.models:
        desired = plan.desired.get(m.key, 0)
        mine = [p for p in avail if m.key in p.resident and (p.name, m.key) in loaded_by_me]
        loaded_on = sorted(p.name for p in mine if serves(m, p.resident[m.key]))
        drifts += [_drift(m, p.name, p.resident[m.key]) for p in mine if p.name not in loaded_on]
        pulled_on = sorted(p.name for p in avail if m.key in p.installed or m.key in p.resident)
        want_pulled = {p.name for p in avail} if m.pull == "all" else set(loaded_on)
        ok = (
            len(loaded_on) >= desired
            and want_pulled <= set(pulled_on)
            and m.key not in problem_models
        )
        satisfied += ok
        if not ok:
            not_ready.append(m.name)
        loaded_total += min(len(loaded_on), desired)
        desired_total += desired
        item: dict[str, Any] = {
            "name": m.name,
            "desired": desired,
            "pulled": len(pulled_on),
            "loaded": len(loaded_on),
            "pulledOn": pulled_on,
            "loadedOn": loaded_on,
        }
        state = scaling.get(m.key) if m.autoscale is not None else None
        if state is not None:
            item["autoscale"] = state_to_status(state)
            scaled_loaded += min(len(loaded_on), desired)
            scaled_desired += desired
            demand_total += state.demand or 0.0
        models.append(item)

    problems: list[Problem] = list(plan.problems)
    problems += [Problem("ActionFailed", f) for f in failures]
    ready = satisfied == len(spec.models) and not failures
    handed = {a.action.slot for a in activities}
    work = list(activities) + [Activity(a) for a in plan.actions if a.slot not in handed]
    conditions = [
        _condition(
            "Ready",
            ready,
            "AllModelsReady" if ready else "ModelsNotReady",
            f"{satisfied}/{len(spec.models)} models ready"
            + (f"; waiting for {', '.join(not_ready)}" if not_ready else "")
            + "".join(f"; {d}" for d in drifts),
            generation,
        ),
        _condition(
            "Reconciling",
            bool(work),
            _work_reason(work),
            "; ".join(describe_activity(w) for w in work[:8])
            + (f"; and {len(work) - 8} more" if len(work) > 8 else ""),
            generation,
        ),
        _condition(
            "Degraded",
            bool(problems),
            problems[0].reason if problems else "AsExpected",
            "; ".join(p.message for p in problems),
            generation,
        ),
    ]
    status: dict[str, Any] = {
        "readyModels": f"{satisfied}/{len(spec.models)}",
        "loadedReplicas": f"{loaded_total}/{desired_total}",
        "pods": [
            {"name": p.name, "node": p.node, "reachable": p.available}
            | ({"error": p.error} if p.error else {})
            for p in obs.pods
        ],
        "models": models,
        "owned": ledger_to_status(ledger),
        "conditions": merge_conditions(previous_conditions, conditions, now),
    }
    autoscaled = [m for m in spec.models if m.autoscale is not None and m.key in scaling]
    if autoscaled:
        known = demand is not None and demand.known
        status["scaledReplicas"] = f"{scaled_loaded}/{scaled_desired}"
        status["demand"] = f"{demand_total:.3g}" if known else "unknown"
        conditions.append(_scaling_condition(autoscaled, scaling, demand, generation))
        status["conditions"] = merge_conditions(previous_conditions, conditions, now)
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _scaling_condition(
    models: Sequence[ModelSpec],
    scaling: Mapping[str, ScaleState],
    demand: DemandReading | None,
    generation: int | None,
) -> dict[str, Any]:
    if demand is None or not demand.known:
        why = demand.error if demand is not None else "no balancer configured"
        held = ", ".join(f"{m.name} at {scaling[m.key].replicas}" for m in models)
        return _condition(
            "ScalingActive",
            False,
            "DemandUnknown",
            f"{why}; holding {held}",
            generation,
        )
    parts = []
    for m in models:
        st, auto = scaling[m.key], m.autoscale
        assert auto is not None
        parts.append(
            f"{m.name}: demand {st.demand or 0:.3g} at {auto.target_requests:g} per copy -> "
            f"{st.replicas} (min {auto.min_replicas}, max {auto.max_replicas})"
            + (f", {st.message}" if st.message else "")
        )
    return _condition(
        "ScalingActive",
        True,
        "DemandKnown",
        f"following the balancer's demand (mean of {demand.samples} polls): " + "; ".join(parts),
        generation,
    )


def _drift(m: ModelSpec, pod: str, r: Resident) -> str:
    want = m.options_dict.get("num_ctx")
    if isinstance(want, int) and r.context_length and r.context_length != want:
        return (
            f"{m.name} on {pod} runs with num_ctx {r.context_length}, not the pool's {want} "
            "(a client reloaded it with other options)"
        )
    if math.isinf(m.keep_alive) and not r.pinned:
        return f"{m.name} on {pod} is no longer pinned (a client's keep_alive replaced the pin)"
    return f"{m.name} on {pod} does not match the pool's options"


_WORKING = {"pull": "Pulling", "load": "Loading", "unload": "Unloading", "delete": "Deleting"}


def _work_reason(work: Sequence[Activity]) -> str:
    if not work:
        return "Reconciled"
    running = [w for w in work if w.running]
    first = sorted(running or work, key=lambda w: w.action.priority)[0]
    return _WORKING[first.action.kind.value] if running else "Queued"


def describe_activity(w: Activity) -> str:
    """``pull llama3.3:70b on ollama-0 (pull for load): 31% of 39.6 GiB`` and the like."""
    text = w.action.describe()
    if not w.running:
        return text + ": queued"
    if w.total:
        pct = 100 * w.completed // w.total
        return f"{text}: {pct}% of {format_bytes(w.total)}"
    return text + ": running"


def invalid_spec_status(
    message: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """Status for a spec the schema let through but the operator cannot use.

    The ledger is kept untouched: an invalid edit must not make the pool forget
    (and so never prune) what it owns.
    """
    prev = dict(previous or {})
    conditions = [
        _condition("Ready", False, "InvalidSpec", message, generation),
        _condition("Reconciling", False, "InvalidSpec", "", generation),
        _condition("Degraded", True, "InvalidSpec", message, generation),
    ]
    out = {k: v for k, v in prev.items() if k in ("owned", "models", "pods")}
    out["conditions"] = merge_conditions(prev.get("conditions"), conditions, now)
    if generation is not None:
        out["observedGeneration"] = generation
    return out
