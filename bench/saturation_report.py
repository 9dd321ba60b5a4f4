"""What ``bench saturation`` reports, from its runs: TTFT by group, the issue's targets, and the
scheduler's figures (issue #23).  Pure: runs in, tables out.

Per policy, on the same trace:

* **TTFT** p50/p99 overall, per tenant, per class, per length, and of each tenant run alone;
  a tenant's *ratio to alone* is its p99 under the mix over its p99 alone (same policy).
* **Failed**: answers that were not a complete 200, 429s apart (**refused**, per tenant: the
  scheduler's admission or the wait room's limits).
* **Preemptions** and **resumes**: the balancers' ``ollama_fleet_preemptions_total`` and
  ``ollama_fleet_resumes_total`` (summed over replicas); *cut* = generations the pods saw cut
  (the emulator's records).
* **Waste**: slot-seconds preemption cost, from the emulator's generation records
  (:mod:`bench.slot_time`: each cut victim's tail after its connection closed, plus each
  continuation's prompt tokens its slot's cache did not hold, at the prompt rate), as a share of
  the slot-seconds the pods spent in the run (the sum of every generation's ``held_seconds``).
  The balancers' own ``ollama_fleet_preemption_waste_seconds_total`` is shown beside it.
* **Fairness**: Jain's index of slot-seconds / weight over the tenants backlogged (a request of
  theirs waiting for its first token) throughout a window of ``window`` seconds, for each window
  with two or more such tenants; its mean, its minimum and how many windows.
* **Goodput**: output tokens the clients received per emulated second, from the first arrival to
  the last answer (tokens generated and thrown away by a cut are not in it).
* **Wait estimate** (``reclaim``): the scheduler's ``X-Queue-Estimate`` at arrival against the
  wait it reported (``X-Queue-Wait``), per answered request: the mean absolute percentage error
  over requests that waited at least ``MAPE_FLOOR`` seconds (a percentage of a wait near zero is
  noise), the 90th percentile of the absolute error over all, and the mean signed error
  (positive: the estimate was too long).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from . import common, slot_time

__all__ = ["CLASSES", "MAPE_FLOOR", "TARGETS", "TENANTS", "render", "summarise"]

TENANTS = ("heavy", "light")
CLASSES = ("critical", "standard", "batch")
#: Waits shorter than this (emulated seconds) are left out of the estimate's MAPE.
MAPE_FLOOR = 1.0

#: The issue's targets: (figure, bound, "<=" or "=="), checked per policy.
TARGETS = (
    ("light ratio", 2.0),
    ("critical/batch", 0.3),
    ("all / early", 1.0),
    ("failed", 0.0),
    ("waste share", 0.05),
)

GROUPS = (
    "all", "tenant heavy", "tenant light", "heavy alone", "light alone", "class critical",
    "class standard", "class batch", "short requests", "long requests",
)  # fmt: skip


def _stats(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r["ttft"] for r in recs if r.get("ok")]
    return {
        "requests": len(recs),
        "failed": sum(1 for r in recs if not r.get("ok")),
        "refused": sum(1 for r in recs if r.get("status") == 429),
        "ttft_p50": common.pct(ok, 50),
        "ttft_p99": common.pct(ok, 99),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def estimate_error(recs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The admission estimate against the wait, over the answers carrying both."""
    pairs = [
        (float(r["queue_estimate"]), float(r["queue_wait"]))
        for r in recs
        if r.get("ok") and "queue_estimate" in r and "queue_wait" in r
    ]
    finite = [(e, w) for e, w in pairs if math.isfinite(e)]
    errors = [abs(e - w) for e, w in finite]
    waited = [(e, w) for e, w in finite if w >= MAPE_FLOOR]
    return {
        "n": len(pairs),
        "infinite": len(pairs) - len(finite),
        "mape": statistics.fmean(abs(e - w) / w for e, w in waited) if waited else math.nan,
        "mape_n": len(waited),
        "p90_abs": common.pct(errors, 90),
        "bias": statistics.fmean(e - w for e, w in finite) if finite else math.nan,
    }


def _goodput(recs: Sequence[Mapping[str, Any]]) -> float:
    """Tokens the clients received (each answer runs to its ``max_tokens``) per second."""
    ok = [r for r in recs if r.get("ok")]
    if not ok:
        return math.nan
    span = max(r["at"] + r["e2e"] for r in ok) - min(r["at"] for r in recs)
    return sum(int(r.get("tokens", 0)) for r in ok) / span if span > 0 else 0.0


def slot_figures(cfg: Any, run: Mapping[str, Any]) -> dict[str, float]:
    """Preemption, waste and fairness from a run's generation records (real runs only)."""
    recs = run["records"]
    helds = slot_time.held_slots(run["generations"], cfg.prompt_tokens_per_second)
    busy = sum(h.held for h in helds)
    waste = sum(h.waste for h in helds)
    arrivals = {int(r["request"]): float(r["at"]) for r in recs if "request" in r}
    offset = slot_time.clock_offset(helds, arrivals)
    end = cfg.overload_seconds + cfg.underload_seconds
    waits: dict[str, list[tuple[float, float]]] = {}
    for r in recs:
        done = r["at"] + (r["ttft"] if r.get("ok") else r.get("e2e", 0.0))
        waits.setdefault(str(r.get("tenant")), []).append((r["at"], done))
    served = slot_time.served(helds, offset, 0.0, end, cfg.window)
    backlog = slot_time.backlogged(waits, 0.0, end, cfg.window)
    jains = slot_time.window_fairness(served, backlog, {})
    counters = run.get("counters", {})
    return {
        "preemptions": counters.get("preemptions", math.nan),
        "resumes": counters.get("resumes", math.nan),
        "cut": sum(1 for h in helds if h.preempted),
        "continuations": sum(1 for h in helds if h.continuation),
        "busy_s": busy,
        "waste_s": waste,
        "waste share": waste / busy if busy else 0.0,
        "waste_metric_s": counters.get("waste_metric_s", math.nan),
        "jain_mean": statistics.fmean(jains) if jains else math.nan,
        "jain_min": min(jains) if jains else math.nan,
        "jain_windows": len(jains),
        "goodput": _goodput(recs),
    }


def summarise(
    cfg: Any, run: Mapping[str, Any], alone: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """One policy's row: its groups, figures and records (``alone``: tenant -> its run)."""
    recs = run["records"]
    groups: dict[str, dict[str, Any]] = {"all": _stats(recs)}
    for t in TENANTS:
        groups[f"tenant {t}"] = _stats([r for r in recs if r.get("tenant") == t])
    for c in CLASSES:
        groups[f"class {c}"] = _stats([r for r in recs if r.get("class") == c])
    for length in ("short", "long"):
        groups[f"{length} requests"] = _stats([r for r in recs if r.get("length") == length])
    for t, a in alone.items():
        groups[f"{t} alone"] = _stats(a["records"])
    figures: dict[str, Any] = {
        "failed": sum(1 for r in recs if not r.get("ok") and r.get("status") != 429),
        "refused": {t: groups[f"tenant {t}"]["refused"] for t in TENANTS},
        "critical/batch": _ratio(
            groups["class critical"]["ttft_p99"], groups["class batch"]["ttft_p99"]
        ),
        "estimate": estimate_error(recs),
    }
    for t in TENANTS:
        base = groups.get(f"{t} alone", {}).get("ttft_p99", math.nan)
        figures[f"{t} ratio"] = _ratio(groups[f"tenant {t}"]["ttft_p99"], base)
    if "generations" in run:
        figures.update(slot_figures(cfg, run))
    return {
        "policy": run["policy"],
        "groups": groups,
        "figures": figures,
        "ollama_waiting_peak": run["ollama_waiting_peak"],
        "ollama_waiting_mean": run["ollama_waiting_mean"],
        "proxy_cpu_s": run["proxy_cpu_s"],
        "records": recs,
        "alone_records": alone["light"]["records"] if "light" in alone else [],
        "generations": run.get("generations", []),  # raw, for a closer look at a run
    }


def _head(doc: Mapping[str, Any]) -> str:
    c = doc["config"]
    replicas = c.get("replicas", 1)
    where = (
        f"{replicas} balancer replicas sharing a redis-server behind a round-robin nginx"
        if replicas > 1
        else "one balancer"
    )
    return (
        f"{c['pods']} pods x {c['slots']} slots, one model resident everywhere; capacity "
        f"{c['capacity_rps']:.2f} req/s (mean slot time {c['mean_service_s']:.2f} s); offered "
        f"{c['overload']}x capacity for {c['overload_seconds']:g} s then {c['underload']}x for "
        f"{c['underload_seconds']:g} s ({doc['trace_size']} requests); heavy sends "
        f"{c['heavy_ratio']:g}x light; {100 * c['long_fraction']:.0f}% long; seed {c['seed']}; "
        f"{where}; time_scale {c['time_scale']} (times in emulated seconds)\n\n"
    )


def _met(name: str, value: float, bound: float) -> str:
    if math.isnan(value):
        return "—"
    ok = value == bound if name == "failed" else value <= bound
    return "yes" if ok else "**no**"


def render(doc: Mapping[str, Any]) -> str:
    rows = []
    for r in doc["rows"]:
        for name in GROUPS:
            g = r["groups"].get(name)
            if g is not None:
                rows.append(
                    [r["policy"], name, g["requests"], g["failed"], g["refused"], g["ttft_p50"],
                     g["ttft_p99"]]
                )  # fmt: skip
    text = _head(doc) + common.table(
        ["policy", "group", "requests", "failed", "of which 429", "TTFT p50 s", "TTFT p99 s"],
        rows,
    )
    by = {r["policy"]: r for r in doc["rows"]}
    early = by.get("early", {}).get("groups", {}).get("all", {}).get("ttft_p99", math.nan)
    targets, figures = [], []
    for r in doc["rows"]:
        f, g = r["figures"], r["groups"]
        values = dict(f)
        values["all / early"] = _ratio(g["all"]["ttft_p99"], early)
        values.setdefault("waste share", math.nan)
        row: list[Any] = [r["policy"]]
        for name, bound in TARGETS:
            row += [values[name], _met(name, float(values[name]), bound)]
        targets.append(row)
        est = f["estimate"]
        figures.append(
            [
                r["policy"], f["heavy ratio"], f["light ratio"],
                f"{f['refused']['heavy']} / {f['refused']['light']}",
                f.get("preemptions", math.nan), f.get("resumes", math.nan), f.get("cut", math.nan),
                f.get("waste_s", math.nan), f.get("waste_metric_s", math.nan),
                f.get("jain_mean", math.nan), f.get("jain_min", math.nan),
                f.get("jain_windows", 0), f.get("goodput", math.nan),
                est["mape"] if est["n"] else math.nan, est["p90_abs"], est["bias"],
                r["ollama_waiting_peak"], r["proxy_cpu_s"],
            ]
        )  # fmt: skip
    text += "\n\nTargets (issue #23), each policy against them:\n\n" + common.table(
        ["policy", "light p99 / alone", "≤ 2?", "critical / batch p99", "≤ 0.3?",
         "all p99 / early's", "≤ 1.0?", "failed (not 429)", "= 0?", "waste share", "≤ 5%?"],
        targets,
    )  # fmt: skip
    text += "\n\n" + common.table(
        ["policy", "heavy p99 / alone", "light p99 / alone", "429s heavy / light",
         "preemptions", "resumes", "generations cut", "waste s", "waste s (balancer)",
         "Jain mean", "Jain min", "windows", "goodput tok/s", "estimate MAPE",
         "p90 abs error s", "mean error s", "peak waiting in Ollama", "proxy CPU s"],
        figures,
    )  # fmt: skip
    for p in doc.get("skipped", []):
        text += f"\n\n{p}: not run (this balancer has no such policy)"
    return text
