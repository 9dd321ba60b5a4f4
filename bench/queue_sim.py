"""``python -m bench.queue_sim [--smoke]``: the saturation trace through the pure core, simulated.

A discrete-event simulation, no processes: the same seeded trace as
``python -m bench saturation`` (:func:`bench.saturation.make_trace`), the same fleet
shape, and the balancer's *pure* decisions, :class:`~ollama_balancer.core.queueing.WaitQueue`
and :func:`~ollama_balancer.core.dispatch.dispatch`, driving simulated pods:

* ``early``: every request bound on arrival (``Binding.EARLY``); each pod then serves
  its requests first come, first served on its slots, as Ollama's slot semaphore does;
* ``late``: requests wait in the queue (classes, fair share on tokens, batch aging) and
  are bound when a slot frees (``Binding.LATE``).

A request holds its slot for prefill (prompt tokens / prefill rate) plus decode (max_tokens /
decode rate); its TTFT is the wait for a slot plus prefill plus one token.  No network, no
proxy CPU, no polling lag: this previews what the policy can do, it does not replace the
measurement on real processes, which is ``python -m bench saturation --policies early,late``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections.abc import Sequence
from typing import Any

from ollama_balancer.core.dispatch import Binding, dispatch
from ollama_balancer.core.errors import for_outcome
from ollama_balancer.core.fleet import BackendState, FleetSnapshot
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.occupancy import Occupancy
from ollama_balancer.core.queueing import Priority, QueueSettings, Waiting, WaitQueue
from ollama_balancer.core.routing import Policy
from ollama_balancer.core.tokens import estimate_tokens
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical

from . import common, saturation, saturation_report

#: The policies the simulation plays (the scheduler's preemption is not simulated).
SIMULATED = ("early", "late")

KEY = canonical(saturation.MODEL)
#: Simulated pods never miss a poll.
ALWAYS_FRESH = Policy(stale_after=math.inf)


def snapshot(cfg: saturation.Config) -> FleetSnapshot:
    inst = InstalledModel(saturation.MODEL, 4 * 10**9, "d")
    res = ResidentModel(saturation.MODEL, 4 * 10**9, 4 * 10**9, "d", "", 4096)
    return FleetSnapshot(
        tuple(
            BackendState(
                Backend(f"node-{i}", f"http://node-{i}", slots=cfg.slots, vram_bytes=24 * 2**30),
                installed={KEY: inst},
                resident={KEY: res},
                last_ok=0.0,
            )
            for i in range(cfg.pods)
        )
    )


def _durations(cfg: saturation.Config, item: dict[str, Any]) -> tuple[float, float]:
    """(seconds to the first token once a slot is held, seconds the slot is held)."""
    prefill = len(item["prompt"]) / 4 / cfg.prompt_tokens_per_second
    first = prefill + 1 / cfg.tokens_per_second
    return first, prefill + item["max_tokens"] / cfg.tokens_per_second


def simulate(
    cfg: saturation.Config, trace: Sequence[dict[str, Any]], policy: str
) -> tuple[list[dict[str, Any]], int]:
    """Records like the load generator's (TTFT in emulated seconds), and the peak number of
    requests waiting inside the pods for a slot."""
    binding = Binding(policy)
    fleet = snapshot(cfg)
    queue = WaitQueue(
        QueueSettings(max_per_model=100_000, max_wait=1e9, batch_aging=cfg.batch_aging)
    )
    rng = random.Random(cfg.seed)
    inflight: dict[tuple[str, str], int] = {}  # bound to a pod (holding or awaiting a slot)
    busy: dict[str, int] = {}  # slots held per pod
    pod_fifo: dict[str, list[int]] = {s.name: [] for s in fleet.backends}
    records: list[dict[str, Any]] = [{} for _ in trace]
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, request index)
    order = 0
    peak = 0

    def push(t: float, kind: str, i: int) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, i))

    def start(pod: str, i: int, now: float) -> None:
        busy[pod] = busy.get(pod, 0) + 1
        first, hold = _durations(cfg, trace[i])
        records[i]["ttft"] = now - trace[i]["at"] + first
        records[i]["backend"] = pod
        push(now + hold, "done", i)

    def state(now: float) -> FleetState:
        occupancy = Occupancy(
            held=dict(inflight),
            service_times={KEY: cfg.mean_service()},
            load_times={KEY: 10.0},
        )
        return FleetState.at(
            fleet,
            occupancy,
            now,
            fail_threshold=ALWAYS_FRESH.fail_threshold,
            stale_after=ALWAYS_FRESH.stale_after,
        )

    def run_dispatch(now: float) -> None:
        d = dispatch(queue.ordered(now), state(now), rng, binding=binding, policy=ALWAYS_FRESH)
        for r in d.rejects:
            queue.cancel(r.id)
            records[int(r.id)]["status"] = for_outcome(r.outcome).status
        for b in d.binds:
            queue.take(b.id)
            i = int(b.id)
            inflight[(b.backend, KEY)] = inflight.get((b.backend, KEY), 0) + 1
            if busy.get(b.backend, 0) < cfg.slots:
                start(b.backend, i, now)
            else:
                pod_fifo[b.backend].append(i)  # early binding: waits inside "Ollama"
        nonlocal peak
        peak = max(peak, sum(len(f) for f in pod_fifo.values()))

    for i, item in enumerate(trace):
        push(item["at"], "arrive", i)
    while events:
        now, _, kind, i = heapq.heappop(events)
        if kind == "arrive":
            item = trace[i]
            tags = item["tags"]
            records[i] = {"at": item["at"], **tags}
            body = {
                "messages": [{"role": "user", "content": item["prompt"]}],
                "max_tokens": item["max_tokens"],
            }
            queue.offer(
                Waiting(
                    str(i),
                    KEY,
                    tags["tenant"],
                    Priority(tags["class"]),
                    estimate_tokens(body, "/v1/chat/completions").total,
                    display=saturation.MODEL,
                ),
                now,
            )
        else:
            pod = records[i]["backend"]
            busy[pod] -= 1
            inflight[(pod, KEY)] -= 1
            records[i]["ok"] = True
            if pod_fifo[pod]:
                start(pod, pod_fifo[pod].pop(0), now)
        run_dispatch(now)
    return records, peak


def run(cfg: saturation.Config) -> dict[str, Any]:
    trace = saturation.make_trace(cfg)
    light = [it for it in trace if it["tags"]["tenant"] == "light"]
    rows = []
    for policy in (p for p in cfg.policies if p in SIMULATED):
        records, peak = simulate(cfg, trace, policy)
        mixed = {
            "policy": policy,
            "records": records,
            "ollama_waiting_peak": peak,
            "ollama_waiting_mean": float("nan"),
            "proxy_cpu_s": float("nan"),
        }
        alone = {"light": {"records": simulate(cfg, light, policy)[0]}}
        rows.append(saturation_report.summarise(cfg, mixed, alone))
    cfg_doc = {**cfg.__dict__, "capacity_rps": cfg.capacity(), "mean_service_s": cfg.mean_service()}
    return {"rows": rows, "skipped": [], "config": cfg_doc, "trace_size": len(trace)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queue_sim", description=__doc__)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    cfg = saturation.SMOKE if args.smoke else saturation.Config()
    doc = run(cfg)
    text = "SIMULATED (pure core, no processes)\n\n" + saturation.render(doc)
    print(f"command: python -m bench.queue_sim {' '.join(argv or [])}".rstrip())
    print(text)
    common.write_result("queue-sim" + ("-smoke" if args.smoke else ""), doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
