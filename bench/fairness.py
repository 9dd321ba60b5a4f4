"""Benchmark: fairness across replicas (issue #23, item 4).  Two tenants weighted 4:1 in the
same class, each sending only to its own balancer replica, both backlogged all the time: do
they receive slot-seconds 4:1?

Fleet: ``pods`` emulated pods × ``slots`` slots, one model resident on every pod.  A keys file
gives tenant ``A`` weight ``weight_a`` and tenant ``B`` weight ``weight_b``, both ``standard``.
Two balancer processes run the scheduler (``--queue --queue-policy reclaim``, its clocks scaled
like the emulator's, :mod:`bench.bindings`); tenant A's clients talk only to replica 1, B's
only to replica 2.  Each tenant runs ``concurrency`` closed-loop clients (streamed OpenAI chats
of a fixed size), more than the fleet has slots, so both always have requests waiting.

The run is made twice, same fleet, same load:

* ``shared``: the replicas share state through a real redis-server (``--shared-state``): one
  board, one fair-share clock, so the two replicas should decide as one scheduler;
* ``alone``: no store; each replica believes it is the only one, schedules only its own
  tenant, and counts only its own requests against the pods' slots.

**What is measured.**  Slot-seconds each tenant received, from the emulator's generation
records (:mod:`bench.slot_time`: every generation's hold on its slot, joined to its tenant by
the prompt's opening), inside the *saturated window*: from ``warmup`` emulated seconds after
the first request to the moment the clients stop sending (``duration``).  Holds spanning the
window's edges are cut at them.  A preempted request's slot time counts for its tenant up to
the moment its slot was free again (that time was its tenant's, wasted or not).

Figures per mode: each tenant's slot-seconds, their ratio, its error against the weights'
ratio (``|ratio / (weight_a / weight_b) − 1|``; the target is ≤ 10 % with shared state),
Jain's index of slot-seconds / weight (1 = exactly by weight, 0.5 = one tenant got all),
requests completed per tenant inside the run, preemptions (the balancers' counter), failed
requests, and whether both tenants were backlogged (a request waiting for its first token)
throughout the window — the condition for the ratio to mean anything.  Times are emulated
seconds (real / ``time_scale``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import yaml

from . import bindings, common, fleets, slot_time

__all__ = ["MODES", "QUICK", "SMOKE", "Config", "render", "run", "summarise"]

MODEL = "chat"
MODES = ("shared", "alone")
TENANTS = ("A", "B")
# Keys of the two tenants (loopback benchmark only; the balancer stores their hashes).
KEYS = {"A": "sk-bench-fair-a", "B": "sk-bench-fair-b"}


@dataclass
class Config:
    pods: int = 4
    slots: int = 2
    time_scale: float = 0.25
    weight_a: float = 4.0
    weight_b: float = 1.0
    concurrency: int = 12  # clients per tenant (more than the fleet's slots: always backlogged)
    max_tokens: int = 100
    prompt_tokens: int = 200
    tokens_per_second: float = 20.0
    prompt_tokens_per_second: float = 2000.0
    duration: float = 240.0  # emulated seconds the clients send
    warmup: float = 40.0  # emulated seconds left out at the start (counters settle)
    window: float = 20.0  # emulated seconds per window of the per-window figures
    timeout: float = 600.0  # emulated seconds a client waits
    batch_aging: float = 30.0
    modes: tuple[str, ...] = MODES

    def service(self) -> float:
        """Emulated seconds a request holds its slot (prompt, then every token)."""
        return (
            self.prompt_tokens / self.prompt_tokens_per_second
            + self.max_tokens / self.tokens_per_second
        )

    def target_ratio(self) -> float:
        return self.weight_a / self.weight_b


QUICK = Config(duration=160.0, warmup=30.0)
SMOKE = Config(
    pods=2,
    time_scale=0.1,
    concurrency=6,
    max_tokens=40,
    duration=120.0,
    warmup=30.0,
    window=15.0,
    timeout=300.0,
)


def fleet(cfg: Config) -> dict[str, Any]:
    return fleets.resident_fleet(
        MODEL, cfg.pods, cfg.slots, cfg.time_scale, cfg.tokens_per_second,
        cfg.prompt_tokens_per_second,
    )  # fmt: skip


def keys_file(cfg: Config) -> str:
    weights = {"A": cfg.weight_a, "B": cfg.weight_b}
    return yaml.safe_dump(
        {
            "keys": [
                {
                    "name": name,
                    "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                    "priority": "standard",
                    "weight": weights[name],
                }
                for name, key in KEYS.items()
            ]
        }
    )


def balancer_flags(cfg: Config, keys: str) -> list[str]:
    s = cfg.time_scale
    policy = bindings.binding_flags("reclaim", s, cfg.timeout * s, cfg.batch_aging * s)
    if policy is None:
        raise SystemExit("fairness: this balancer has no --queue-policy reclaim")
    return [
        *policy,
        "--auth-file", keys,
        "--poll-interval", f"{max(0.1, 2 * s):g}",
        "--default-load-seconds", f"{10 * s:g}",
        "--default-service-seconds", f"{cfg.service() * s:g}",
        "--stale-after", f"{max(3.0, 60 * s):g}",
        "--first-byte-timeout", f"{cfg.timeout * s:g}",
        "--max-connections", "0",
    ]  # fmt: skip


def _generations(urls: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for u in urls:
        out += json.loads(common.http_get(u + "/-/emulator/generations", timeout=10)[1])[
            "generations"
        ]
    return out


#: The store's hash of fair-share counters (``model|class|tenant`` → slot-seconds / weight),
#: under the balancer's default key prefix.
FAIR_KEY = "ollama-fleet:fair"


def _sample_counters(url: str, stop: threading.Event, every: float) -> list[dict[str, Any]]:
    """The fleet's fair-share counters over time (real seconds since the sampling began)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    t0 = time.monotonic()
    out: list[dict[str, Any]] = []
    try:
        while not stop.is_set():
            fields: dict[str, str] = client.hgetall(FAIR_KEY)  # type: ignore[assignment]
            counters = {f.rsplit("|", 1)[-1]: float(v) for f, v in fields.items()}
            out.append({"t": time.monotonic() - t0, "counters": counters})
            stop.wait(every)
    finally:
        client.close()
    return out


def run_one(cfg: Config, mode: str) -> dict[str, Any]:
    """One mode on a fresh fleet: the load's records (emulated seconds), the generation
    records, the balancers' preemption counters and (shared) the store's fair-share
    counters over time."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    s = cfg.time_scale
    with common.workspace("fairness") as (tmp, procs):
        urls = common.start_emulator(procs, fleet(cfg))
        keys = tmp / "keys.yaml"
        keys.write_text(keys_file(cfg))
        extra = balancer_flags(cfg, str(keys))
        store = None
        if mode == "shared":
            _, store = common.start_redis(procs)
            extra += ["--shared-state", store]
        group = common.start_replicas(
            procs,
            urls,
            2,
            shared=False,  # the store, when any, is ours: its counters are read below
            extra=extra,
            backend_opts=f";slots={cfg.slots};vram=24GiB",
            ops=True,
        )
        if store is not None:
            common.wait_shared(group.urls)
        stop = threading.Event()
        samples: list[dict[str, Any]] = []
        sampler = threading.Thread(
            target=lambda: samples.extend(_sample_counters(store, stop, 0.5)) if store else None,
            daemon=True,
        )
        sampler.start()
        groups = [
            {
                "tenant": tenant,
                "url": base + "/v1/chat/completions",
                "headers": {"Authorization": f"Bearer {KEYS[tenant]}"},
                "concurrency": cfg.concurrency,
                "model": MODEL,
                "max_tokens": cfg.max_tokens,
                "prompt_tokens": cfg.prompt_tokens,
            }
            for tenant, base in zip(TENANTS, group.urls, strict=True)
        ]
        spec: dict[str, Any] = {
            "mode": "tenants",
            "groups": groups,
            "duration": cfg.duration * s,
            "timeout": cfg.timeout * s,
            "hard_timeout": (cfg.duration + cfg.timeout) * s + 60,
        }
        try:
            res = common.run_loadgen(tmp, spec, timeout=float(spec["hard_timeout"]) + 30)
        finally:
            stop.set()
            sampler.join(10)
        # A cut generation lets go of its slot about a token later: wait for every record.
        common.wait_until(
            lambda: all(g["outcome"] != "running" for g in _generations(urls)),
            30,
            "every generation ended",
        )
        generations = _generations(urls)
        preemptions = {
            reason: group.metric("ollama_fleet_preemptions_total", reason=reason)
            for reason in ("class-share", "tenant-share")
        }
        fallbacks = sum(
            int(common.shared_status(u).get("fallbacks", 0)) for u in group.urls if store
        )
    recs = res["records"]
    for r in recs:
        for k in ("ttft", "e2e", "at"):
            if k in r:
                r[k] = r[k] / s
    return {
        "mode": mode,
        "records": recs,
        "generations": generations,
        "preemptions": preemptions,
        "fallbacks": fallbacks,
        # Real seconds to emulated: the balancers' clocks (and so their counters) run in real.
        "counter_samples": [
            {"t": x["t"] / s, "counters": {k: v / s for k, v in x["counters"].items()}}
            for x in samples
        ],
    }


def summarise(cfg: Config, raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of one mode's run (pure: records in, figures out)."""
    recs: list[dict[str, Any]] = raw["records"]
    helds = slot_time.held_slots(raw["generations"], cfg.prompt_tokens_per_second)
    arrivals = {int(r["request"]): float(r["at"]) for r in recs}
    offset = slot_time.clock_offset(helds, arrivals)
    start, end = cfg.warmup, cfg.duration
    whole = slot_time.served(helds, offset, start, end, end - start)
    served = whole[0] if whole else {}
    a, b = served.get("A", 0.0), served.get("B", 0.0)
    ratio = a / b if b > 0 else float("inf")
    weights = {"A": cfg.weight_a, "B": cfg.weight_b}
    jain = slot_time.window_fairness([served], [set(TENANTS)], weights)[0]
    # A request waits for its first token from its start; one never answered, to the end.
    waits: dict[str, list[tuple[float, float]]] = {t: [] for t in TENANTS}
    for r in recs:
        first = r["at"] + r["ttft"] if "ttft" in r else r["at"] + r["e2e"]
        waits[r["tenant"]].append((r["at"], first))
    per_window = slot_time.served(helds, offset, start, end, cfg.window)
    backlogged = slot_time.backlogged(waits, start, end, cfg.window)
    window_ratios = [w.get("A", 0.0) / w["B"] for w in per_window if w.get("B", 0.0) > 0]
    return {
        "mode": raw["mode"],
        "slot_seconds": {"A": a, "B": b},
        "ratio": ratio,
        "error": abs(ratio / cfg.target_ratio() - 1),
        "jain": jain,
        "window_jain": slot_time.window_fairness(per_window, backlogged, weights),
        "window_ratios": window_ratios,
        "backlogged": all(len(w) == len(TENANTS) for w in backlogged),
        "done": {t: sum(1 for r in recs if r["tenant"] == t and r.get("ok")) for t in TENANTS},
        "failed": sum(1 for r in recs if not r.get("ok")),
        "preemptions": sum(raw["preemptions"].values()),
        "preemptions_by_reason": raw["preemptions"],
        "charged": _charged(raw["counter_samples"], start, end, weights),
        "cut": sum(1 for h in helds if h.preempted),
        "fallbacks": raw["fallbacks"],
        "fleet_slot_seconds": (end - start) * cfg.pods * cfg.slots,
    }


def _charged(
    samples: list[dict[str, Any]], start: float, end: float, weights: dict[str, float]
) -> dict[str, float]:
    """Slot-seconds the shared fair-share clock charged each tenant inside the window (its
    counter's advance × its weight); empty without a store.  Set beside the slot-seconds the
    emulator measured, it tells the scheduler's accounting from its decisions."""
    inside = [x for x in samples if start <= x["t"] <= end]
    if len(inside) < 2:
        return {}
    first, last = inside[0]["counters"], inside[-1]["counters"]
    span = inside[-1]["t"] - inside[0]["t"]
    scale = (end - start) / span if span > 0 else 1.0
    return {
        t: (last.get(t, 0.0) - first.get(t, 0.0)) * w * scale
        for t, w in weights.items()
        if t in first and t in last
    }


def run(cfg: Config) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for mode in cfg.modes:
        row = summarise(cfg, run_one(cfg, mode))
        print(
            f"  {mode:6s} A:B = {row['ratio']:.2f} (error {row['error']:.1%}) "
            f"jain={row['jain']:.3f} preemptions={row['preemptions']:g} failed={row['failed']}",
            flush=True,
        )
        rows.append(row)
    cfg_doc = {**cfg.__dict__, "service_s": cfg.service()}
    return {"rows": rows, "config": cfg_doc}


def render(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    target = cfg["weight_a"] / cfg["weight_b"]
    head = (
        f"{cfg['pods']} pods × {cfg['slots']} slots, one model; tenants A (weight "
        f"{cfg['weight_a']:g}) → replica 1 and B (weight {cfg['weight_b']:g}) → replica 2, "
        f"{cfg['concurrency']} closed-loop clients each, {cfg['max_tokens']} tokens per answer "
        f"({cfg['service_s']:.1f} slot-s); window {cfg['warmup']:g}–{cfg['duration']:g} emulated "
        f"s ({(cfg['duration'] - cfg['warmup']) * cfg['pods'] * cfg['slots']:.0f} fleet slot-s); "
        f"time_scale {cfg['time_scale']:g}; target A:B = {target:g}:1 within 10%."
    )
    rows = []
    for r in doc["rows"]:
        ratios = r["window_ratios"]
        charged = r.get("charged") or {}
        clock = charged["A"] / charged["B"] if charged.get("B") else float("nan")
        rows.append(
            [
                r["mode"],
                r["slot_seconds"]["A"],
                r["slot_seconds"]["B"],
                f"{r['ratio']:.2f}",
                f"{r['error']:.1%}",
                f"{r['jain']:.3f}",
                (f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"),
                r["done"]["A"],
                r["done"]["B"],
                f"{clock:.2f}",
                int(r["preemptions"]),
                r["failed"],
                "yes" if r["backlogged"] else "no",
            ]
        )
    table = common.table(
        [
            "mode", "A slot-s", "B slot-s", "A:B", "error vs target", "weighted Jain",
            f"A:B per {cfg['window']:g}-s window", "done A", "done B",
            "A:B charged (fair clock)", "preemptions", "failed",
            "both backlogged",
        ],
        rows,
    )  # fmt: skip
    return head + "\n\n" + table
