"""ModelPool status and conditions from one reconcile (pure).

Conditions follow the Kubernetes convention: ``Ready`` (every listed model is
pulled and loaded as declared), ``Progressing`` (work is still pending), and
``Degraded`` (something needs a human: a pod that does not answer, not enough
VRAM or pods, failed pulls or loads, an invalid spec).  ``lastTransitionTime``
only moves when a condition's status flips, so watchers see real transitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .plan import Plan
from .spec import PoolSpec
from .state import Observation, Owned, Problem, ledger_to_status

__all__ = ["build_status", "invalid_spec_status", "merge_conditions"]


def _condition(
    kind: str, ok: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "reason": reason}
    if message:  # an empty string reaches the API server as null (schema: string)
        cond["message"] = message
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
) -> dict[str, Any]:
    """The whole ``status`` for the pool, from the last observation and plan.

    ``plan`` is the plan made from ``obs`` (after executing earlier rounds):
    its actions are the work still pending, its problems why it cannot finish.
    """
    ledger = tuple(ledger)
    loaded_by_me = {(o.pod, o.model) for o in ledger if o.loaded}
    avail = [p for p in obs.pods if p.available]
    problem_models = {p.model for p in plan.problems if p.model}
    models = []
    not_ready: list[str] = []
    satisfied = 0
    loaded_total = desired_total = 0
    for m in spec.models:
        desired = plan.desired.get(m.key, 0)
        loaded_on = sorted(
            p.name for p in avail if m.key in p.resident and (p.name, m.key) in loaded_by_me
        )
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
        models.append(
            {
                "name": m.name,
                "desired": desired,
                "pulled": len(pulled_on),
                "loaded": len(loaded_on),
                "pulledOn": pulled_on,
                "loadedOn": loaded_on,
            }
        )

    problems: list[Problem] = list(plan.problems)
    problems += [Problem("ActionFailed", f) for f in failures]
    ready = satisfied == len(spec.models) and not failures
    conditions = [
        _condition(
            "Ready",
            ready,
            "AllModelsReady" if ready else "ModelsNotReady",
            f"{satisfied}/{len(spec.models)} models ready"
            + (f"; waiting for {', '.join(not_ready)}" if not_ready else ""),
            generation,
        ),
        _condition(
            "Progressing",
            not plan.empty,
            "ActionsPending" if not plan.empty else "Reconciled",
            "; ".join(a.describe() for a in plan.actions[:10]) if not plan.empty else "",
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
    if generation is not None:
        status["observedGeneration"] = generation
    return status


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
        _condition("Progressing", False, "InvalidSpec", "", generation),
        _condition("Degraded", True, "InvalidSpec", message, generation),
    ]
    out = {k: v for k, v in prev.items() if k in ("owned", "models", "pods")}
    out["conditions"] = merge_conditions(prev.get("conditions"), conditions, now)
    if generation is not None:
        out["observedGeneration"] = generation
    return out
