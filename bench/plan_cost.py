"""``python -m bench.plan_cost [--smoke]``: the CPU cost of one scheduler pump and one admission.

The wait room calls :func:`~ollama_balancer.core.scheduling.plan` on every slot-freed
event and :func:`~ollama_balancer.core.scheduling.admit` on every arrival.  This times
both on seeded random pools of the sizes the brief of issue #23 names (64 slots with
256 waiting, 200 slots with 1000 waiting), in this process, no I/O: holders of the three
classes and twenty tenants, a fifth of them still reading their prompt, a fifth
unable to resume; waiting requests of the same mix, some with deadlines.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ollama_balancer.core.queueing import Priority
from ollama_balancer.core.scheduling import (
    Candidate,
    Holder,
    PoolView,
    SchedulerPolicy,
    admit,
    plan,
)

from . import common

NOW = 1000.0


@dataclass
class Config:
    sizes: tuple[tuple[int, int], ...] = ((8, 16), (64, 256), (200, 1000))
    """(slots, waiting) per row."""
    seconds: float = 2.0
    """Time spent calling each function per row."""
    seed: int = 23


SMOKE = Config(sizes=((8, 16), (64, 256)), seconds=0.05)


def pool(slots: int, waiting: int, rng: random.Random) -> PoolView:
    classes = list(Priority)
    holders = tuple(
        Holder(
            lease=f"h{i}",
            pod=f"pod-{i // 4}",
            replica=f"r{i % 3}",
            cls=rng.choice(classes),
            tenant=f"t{rng.randrange(20)}",
            weight=rng.choice([1.0, 2.0, 4.0]),
            started=NOW - rng.uniform(0.0, 60.0),
            first_byte=None if rng.random() < 0.2 else NOW - 1.0,
            expected_seconds=rng.uniform(1.0, 90.0),
            redo_cost=rng.uniform(0.1, 3.0),
            preemptions=rng.randrange(3),
            resumable=rng.random() >= 0.2,
        )
        for i in range(slots)
    )
    queue = tuple(
        Candidate(
            id=f"w{i}",
            replica=f"r{i % 3}",
            cls=rng.choice(classes),
            tenant=f"t{rng.randrange(20)}",
            weight=rng.choice([1.0, 2.0, 4.0]),
            arrival=NOW - rng.uniform(0.0, 120.0),
            expected_seconds=rng.uniform(0.5, 90.0),
            deadline=NOW + rng.uniform(5.0, 300.0) if rng.random() < 0.1 else None,
            resumable=rng.random() >= 0.2,
        )
        for i in range(waiting)
    )
    counters = {(c, f"t{t}"): rng.uniform(0.0, 900.0) for c in classes for t in range(15)}
    return PoolView("llama3:latest", slots, holders, queue, counters, NOW)


def _per_call(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Mean CPU seconds per call of ``fn()`` over about ``seconds`` of CPU, and the calls.

    CPU time, not wall time: on a shared machine the wall clock counts other processes' turns.
    """
    calls = 0
    start = time.process_time()
    while True:
        fn()
        calls += 1
        spent = time.process_time() - start
        if spent >= seconds:
            return spent / calls, calls


def run(cfg: Config) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    policy = SchedulerPolicy()
    rows = []
    for slots, waiting in cfg.sizes:
        view = pool(slots, waiting, rng)
        newcomer = Candidate(
            "new", "r0", Priority.STANDARD, "t3", arrival=NOW, expected_seconds=5.0
        )
        last = plan(view, policy, 2)
        plan_s, plan_n = _per_call(partial(plan, view, policy, 2), cfg.seconds)
        admit_s, admit_n = _per_call(partial(admit, view, policy, newcomer), cfg.seconds)
        rows.append(
            {
                "slots": slots,
                "waiting": waiting,
                "plan_ms": plan_s * 1000,
                "plan_calls": plan_n,
                "admit_ms": admit_s * 1000,
                "admit_calls": admit_n,
                "grants": len(last.grants),
                "preemptions": len(last.preemptions),
            }
        )
    return {"rows": rows, "config": cfg.__dict__}


def render(doc: dict[str, Any]) -> str:
    lines = [
        "| slots | waiting | plan() CPU ms | admit() CPU ms | grants | preemptions |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['slots']} | {r['waiting']} | {r['plan_ms']:.2f} | {r['admit_ms']:.2f} "
            f"| {r['grants']} | {r['preemptions']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan_cost", description=__doc__)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    doc = run(SMOKE if args.smoke else Config())
    text = render(doc)
    print(text)
    common.write_result("plan-cost" + ("-smoke" if args.smoke else ""), doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
