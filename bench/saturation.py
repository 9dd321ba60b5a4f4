"""Benchmark 5, saturation: where requests wait when the fleet is full, and who pays (issues
#13 and #23).

Fleet: ``pods`` emulated pods × ``slots`` slots, one model resident on every pod (nothing
to load).  Traffic (seeded, open loop, OpenAI streaming API): most requests short, some long
(``max_tokens`` sets the length, the emulator honours it); offered load ``overload`` × the
fleet's capacity for ``overload_seconds``, then ``underload`` × for ``underload_seconds``.
Two tenants, each with its own API key: ``heavy`` sends ``heavy_ratio`` times as many requests
as ``light``.  Classes come from the key (``priority: critical``) lowered per request with
``X-Priority``: heavy sends ``critical`` / ``standard`` / ``batch``, light (an interactive
user) ``critical`` / ``standard``.

Policies (``--policies``, comma-separated; :mod:`bench.bindings`): ``early`` (bound on
arrival), ``late`` (the wait room's class order and fair share, ``--queue-policy order``) and
``reclaim`` (the scheduler: shares, lending, preemption and resume), the scheduler's clocks
scaled like the emulator's.  A policy this balancer lacks is skipped with a note.

Every policy runs on the same trace with both tenants, then with each tenant of ``alone``
alone (its baseline).  ``replicas`` > 1: that many balancer processes sharing a real
redis-server behind a round-robin nginx, as ``bench routing --replicas`` runs them.  Times are
*emulated* seconds (real / time_scale).  TTFT = first content chunk.  What is computed from
the runs, and how: :mod:`bench.saturation_report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
from dataclasses import dataclass
from typing import Any

import yaml

from . import bindings, common, fleets
from . import saturation_report as report
from .saturation_report import CLASSES, TENANTS

POLICIES = bindings.BINDINGS
MODEL = "chat"
# Keys of the two tenants (loopback benchmark only; the balancer stores their hashes).
KEYS = {"heavy": "sk-bench-heavy", "light": "sk-bench-light"}
GIB = 2**30


@dataclass
class Config:
    pods: int = 4
    slots: int = 2
    time_scale: float = 0.2
    overload: float = 1.5  # offered load / capacity, first phase
    overload_seconds: float = 60.0
    underload: float = 0.5  # second phase
    underload_seconds: float = 60.0
    heavy_ratio: float = 5.0  # heavy sends this many times more requests than light
    long_fraction: float = 0.15
    short_tokens: tuple[int, int] = (16, 48)
    long_tokens: tuple[int, int] = (400, 800)
    prompt_tokens: tuple[int, int] = (100, 1500)
    tokens_per_second: float = 40.0
    prompt_tokens_per_second: float = 2000.0
    heavy_mix: tuple[float, float, float] = (0.1, 0.5, 0.4)  # critical, standard, batch
    light_mix: tuple[float, float, float] = (0.1, 0.9, 0.0)
    batch_aging: float = 30.0  # late binding: batch competes as standard after this wait
    timeout: float = 600.0  # emulated seconds a client waits
    seed: int = 42
    policies: tuple[str, ...] = POLICIES
    alone: tuple[str, ...] = TENANTS  # tenants also run alone, for their baselines
    replicas: int = 1  # > 1: balancers sharing a redis-server behind a round-robin front
    window: float = 10.0  # emulated seconds per fairness window (Jain's index)

    def mean_service(self) -> float:
        """Expected seconds a request holds a slot (prefill + decode), for the capacity."""
        short = sum(self.short_tokens) / 2
        long = sum(self.long_tokens) / 2
        decode = (1 - self.long_fraction) * short + self.long_fraction * long
        prefill = sum(self.prompt_tokens) / 2 / self.prompt_tokens_per_second
        return decode / self.tokens_per_second + prefill

    def capacity(self) -> float:
        """Requests per emulated second the fleet completes when every slot is busy."""
        return self.pods * self.slots / self.mean_service()


QUICK = Config(overload_seconds=40.0, underload_seconds=40.0)
SMOKE = Config(
    time_scale=0.05,
    overload_seconds=20.0,
    underload_seconds=10.0,
    long_tokens=(100, 200),
    timeout=200.0,
    alone=("light",),
)


def fleet(cfg: Config) -> dict[str, Any]:
    return fleets.resident_fleet(
        MODEL, cfg.pods, cfg.slots, cfg.time_scale, cfg.tokens_per_second,
        cfg.prompt_tokens_per_second,
    )  # fmt: skip


def make_trace(cfg: Config) -> list[dict[str, Any]]:
    """Seeded arrivals in emulated seconds: two Poisson phases, tenants, classes, lengths."""
    rng = random.Random(cfg.seed)
    capacity = cfg.capacity()
    light_share = 1 / (1 + cfg.heavy_ratio)
    out: list[dict[str, Any]] = []
    t = 0.0
    end = cfg.overload_seconds + cfg.underload_seconds
    while True:
        factor = cfg.overload if t < cfg.overload_seconds else cfg.underload
        t += rng.expovariate(factor * capacity)
        if t >= end:
            break
        tenant = "light" if rng.random() < light_share else "heavy"
        mix = cfg.light_mix if tenant == "light" else cfg.heavy_mix
        cls = rng.choices(CLASSES, weights=mix)[0]
        long = rng.random() < cfg.long_fraction
        lo, hi = cfg.long_tokens if long else cfg.short_tokens
        prompt_tokens = rng.randint(*cfg.prompt_tokens)
        out_tokens = rng.randint(lo, hi)  # drawn after the prompt, as always: the same trace
        i = len(out)
        # The emulator counts prompt tokens as characters / 4 (generation.count_tokens).
        prompt = (f"request {i} from {tenant}: " + "lorem ipsum " * prompt_tokens)[
            : 4 * prompt_tokens
        ]
        out.append(
            {
                "at": t,
                "model": MODEL,
                "prompt": prompt,
                "max_tokens": out_tokens,
                "headers": {"Authorization": f"Bearer {KEYS[tenant]}", "X-Priority": cls},
                "tags": {
                    "request": i,
                    "tokens": out_tokens,
                    "tenant": tenant,
                    "class": cls,
                    "length": "long" if long else "short",
                    "phase": "over" if t < cfg.overload_seconds else "under",
                },
            }
        )
    return out


def keys_file() -> str:
    """Both tenants may send critical requests; X-Priority lowers them per request."""
    return yaml.safe_dump(
        {
            "keys": [
                {"name": name, "key_sha256": _sha(key), "priority": "critical", "weight": 1}
                for name, key in KEYS.items()
            ]
        }
    )


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def balancer_flags() -> frozenset[str]:
    """The flags this checkout's balancer accepts (late binding needs ``--queue``)."""
    return bindings.balancer_flags()


def policy_flags(policy: str, cfg: Config) -> list[str] | None:
    """Balancer flags for ``policy`` (:mod:`bench.bindings`), or None when this balancer
    cannot run it."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
    s = cfg.time_scale
    return bindings.binding_flags(policy, s, cfg.timeout * s, cfg.batch_aging * s)


def _sample_waiting(urls: list[str], stop: threading.Event, every: float) -> list[int]:
    """Requests waiting *inside* the emulated Ollamas (for a slot), summed over pods."""
    series: list[int] = []
    while not stop.is_set():
        total = 0
        for u in urls:
            with contextlib.suppress(OSError, ValueError, KeyError):
                doc = json.loads(common.http_get(u + "/-/emulator/state")[1])
                total += sum(int(r["waiting"]) for r in doc["runners"])
        series.append(total)
        stop.wait(every)
    return series


def _start(
    cfg: Config, procs: common.Procs, urls: list[str], extra: list[str]
) -> tuple[str, list[common.Proc], list[str]]:
    """The balancer(s) under test: (URL the load goes to, their processes, their ops URLs)."""
    opts = f";slots={cfg.slots};vram=24GiB"
    if cfg.replicas > 1:
        group = common.start_replicas(
            procs, urls, cfg.replicas, shared=True, extra=extra, backend_opts=opts, ops=True
        )
        return group.url, group.balancers, group.ops
    port = common.free_port()
    proc, base = common.start_balancer(
        procs, urls, extra=[*extra, "--ops-port", str(port)], backend_opts=opts
    )
    return base, [proc], [f"http://127.0.0.1:{port}"]


def _generations(urls: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for u in urls:
        out += json.loads(common.http_get(u + "/-/emulator/generations", timeout=10)[1])[
            "generations"
        ]
    return out


#: The scheduler's counters read from every replica's /metrics at the end of a run.
COUNTERS = {
    "preemptions": "ollama_fleet_preemptions_total",
    "resumes": "ollama_fleet_resumes_total",
    "waste_metric_s": "ollama_fleet_preemption_waste_seconds_total",
}


def run_one(cfg: Config, policy: str, trace: list[dict[str, Any]]) -> dict[str, Any]:
    s = cfg.time_scale
    extra = policy_flags(policy, cfg)
    assert extra is not None
    with common.workspace("saturation") as (tmp, procs):
        urls = common.start_emulator(procs, fleet(cfg))
        keys = tmp / "keys.yaml"
        keys.write_text(keys_file())
        extra = [
            *extra,
            "--auth-file", str(keys),
            "--poll-interval", f"{max(0.1, 2 * s):g}",
            "--default-load-seconds", f"{10 * s:g}",
            "--default-service-seconds", f"{cfg.mean_service() * s:g}",
            "--stale-after", f"{max(3.0, 60 * s):g}",
            "--first-byte-timeout", f"{cfg.timeout * s:g}",
            "--max-connections", "0",
        ]  # fmt: skip
        base, balancers, ops = _start(cfg, procs, urls, extra)
        end = cfg.overload_seconds + cfg.underload_seconds
        spec = {
            "mode": "trace",
            "url": base + "/v1/chat/completions",
            "trace": [{**it, "at": it["at"] * s} for it in trace],
            "timeout": cfg.timeout * s,
            "hard_timeout": (end + cfg.timeout) * s + 60,
        }
        stop = threading.Event()
        waiting: list[int] = []
        sampler = threading.Thread(
            target=lambda: waiting.extend(_sample_waiting(urls, stop, max(0.1, 1 * s))),
            daemon=True,
        )
        cpu0 = sum(p.cpu() for p in balancers)
        sampler.start()
        try:
            res = common.run_loadgen(tmp, spec, timeout=float(str(spec["hard_timeout"])) + 30)
        finally:
            stop.set()
            sampler.join(10)
        cpu = sum(p.cpu() for p in balancers) - cpu0
        # Every cut generation lets go of its slot about a token later: wait for the records.
        common.wait_until(
            lambda: all(g["outcome"] != "running" for g in _generations(urls)),
            30,
            "every generation ended",
        )
        generations = _generations(urls)
        counters = {k: sum(common.metric_sum(u, name) for u in ops) for k, name in COUNTERS.items()}
    recs = res["records"]
    for r in recs:
        for k in ("ttft", "e2e", "at"):
            if k in r:
                r[k] = r[k] / s  # emulated seconds
        for k in ("queue_wait", "queue_estimate"):
            if k in r:
                r[k] = float(r[k]) / s
    counters["waste_metric_s"] /= s
    return {
        "policy": policy,
        "records": recs,
        "elapsed": res["elapsed"] / s,
        "ollama_waiting_peak": max(waiting, default=0),
        "ollama_waiting_mean": sum(waiting) / len(waiting) if waiting else 0.0,
        "proxy_cpu_s": cpu,
        "generations": generations,
        "counters": counters,
    }


def run(cfg: Config) -> dict[str, Any]:
    unknown = sorted(set(cfg.policies) - set(POLICIES))
    if unknown:
        raise SystemExit(f"saturation: unknown policies {unknown} (known: {', '.join(POLICIES)})")
    trace = make_trace(cfg)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for policy in cfg.policies:
        if policy_flags(policy, cfg) is None:
            skipped.append(policy)
            print(f"  {policy:7s} skipped: this balancer has no such policy", flush=True)
            continue
        mixed = run_one(cfg, policy, trace)
        alone = {
            t: run_one(cfg, policy, [it for it in trace if it["tags"]["tenant"] == t])
            for t in cfg.alone
        }
        row = report.summarise(cfg, mixed, alone)
        g = row["groups"]
        print(
            f"  {policy:7s} ttft p99 all={g['all']['ttft_p99']:.2f}s "
            f"light={g['tenant light']['ttft_p99']:.2f}s "
            f"(alone {g.get('light alone', {}).get('ttft_p99', float('nan')):.2f}s) "
            f"failed={g['all']['failed']} preemptions={row['figures'].get('preemptions', 0):g}",
            flush=True,
        )
        rows.append(row)
    cfg_doc = {**cfg.__dict__, "capacity_rps": cfg.capacity(), "mean_service_s": cfg.mean_service()}
    return {"rows": rows, "skipped": skipped, "config": cfg_doc, "trace_size": len(trace)}


def render(doc: dict[str, Any]) -> str:
    return report.render(doc)
