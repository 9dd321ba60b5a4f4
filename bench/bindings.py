"""Where a request waits for its slot, as balancer flags: the binding policies the benchmarks
compare (issues #13 and #23).

* ``early``: ``--no-queue``, every request bound to a pod on arrival (Ollama queues it);
* ``late``: ``--queue --queue-policy order``, requests wait in the balancer by class and fair
  share on tokens and are bound when a slot frees (issue #13's discipline);
* ``reclaim``: ``--queue --queue-policy reclaim``, the scheduler of docs/scheduling.md: class
  shares with lending, slot-second fair share, shortest work first, reclaim by preemption and
  resume, admission from an estimate.

The benchmarks run the emulator ``time_scale`` times faster than real, so every clock of the
balancer's is scaled the same way: the scheduler's per-class wait budgets and maximum waits are
the balancer's **defaults** (read from the package, not restated here) times ``time_scale``,
so a run shows what the defaults do on a real fleet.  Two internal constants are not settable
and stay in real seconds — ``cancel_latency`` (0.2 s, an admission estimate's allowance for a
victim to let go) and ``unresumable_borrow`` (1 s; every benchmark request is resumable) — so
at 1/5 time the estimate of an entitled request is 1 emulated second longer than at full speed.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess

from ollama_balancer.core.scheduling import SchedulerPolicy
from ollama_balancer.core.scheduling.policy import ClassPolicy, class_policy_text

from . import common

__all__ = ["BINDINGS", "balancer_flags", "binding_flags", "scaled_classes"]

BINDINGS = ("early", "late", "reclaim")


@functools.cache
def balancer_flags() -> frozenset[str]:
    """The flags this checkout's balancer accepts."""
    out = subprocess.run(
        [common.PY, "-m", "ollama_fleet", "balancer", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return frozenset(w.rstrip(",") for w in out.split() if w.startswith("--"))


def _scaled(p: ClassPolicy, time_scale: float) -> str:
    return class_policy_text(
        dataclasses.replace(
            p, wait_budget=p.wait_budget * time_scale, max_wait=p.max_wait * time_scale
        )
    )


def scaled_classes(time_scale: float) -> list[str]:
    """``--queue-critical/standard/batch`` with the default policy's seconds × ``time_scale``."""
    d = SchedulerPolicy()
    return [
        "--queue-critical", _scaled(d.critical, time_scale),
        "--queue-standard", _scaled(d.standard, time_scale),
        "--queue-batch", _scaled(d.batch, time_scale),
    ]  # fmt: skip


def binding_flags(
    binding: str, time_scale: float, max_wait: float, batch_aging: float
) -> list[str] | None:
    """Balancer flags for ``binding``, or None when this balancer cannot run it.
    ``max_wait`` and ``batch_aging`` are real seconds (the wait room's limit, batch's aging)."""
    flags = balancer_flags()
    if binding == "early":
        return ["--no-queue"] if "--queue" in flags else []
    if "--queue" not in flags:
        return None
    queue = [
        "--queue",
        "--queue-max-wait", f"{max_wait:g}",
        "--queue-batch-aging", f"{batch_aging:g}",
    ]  # fmt: skip
    has_policy = "--queue-policy" in flags
    if binding == "late":
        return [*queue, "--queue-policy", "order"] if has_policy else queue
    if binding == "reclaim":
        if not has_policy:
            return None
        return [*queue, "--queue-policy", "reclaim", *scaled_classes(time_scale)]
    raise ValueError(f"unknown binding {binding!r} (one of {', '.join(BINDINGS)})")
