"""Benchmark 5, saturation: where requests wait when the fleet is full, and who pays (issue #13).

Fleet: ``pods`` emulated pods × ``slots`` slots, one model resident on every pod (nothing
to load).  Traffic (seeded, open loop, OpenAI streaming API): most requests short, some long
(``max_tokens`` sets the length, the emulator honours it); offered load ``overload`` × the
fleet's capacity for ``overload_seconds``, then ``underload`` × for ``underload_seconds``.
Two tenants, each with its own API key: ``heavy`` sends ``heavy_ratio`` times as many requests
as ``light``.  Classes come from the key (``priority: critical``) lowered per request with
``X-Priority``: heavy sends ``critical`` / ``standard`` / ``batch``, light (an interactive
user) ``critical`` / ``standard``.

Policies (``--policies``, comma-separated):

* ``early``: ``--no-queue``, every request bound to a pod on arrival (Ollama queues it);
* ``late``: ``--queue`` (with ``--queue-max-wait`` and ``--queue-batch-aging``): requests wait
  in the balancer by class and fair share and are bound when a slot frees.  Skipped, with a
  note, by a balancer that has no ``--queue`` flag.

Every policy runs twice on the same trace: with both tenants, and with the light tenant alone
(its baseline).  Times are *emulated* seconds (real / time_scale).  TTFT = first content chunk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from . import common

POLICIES = ("early", "late")
MODEL = "chat"
TENANTS = ("heavy", "light")
CLASSES = ("critical", "standard", "batch")
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
    alone: bool = True  # also run the light tenant alone, for its baseline

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
)


def fleet(cfg: Config) -> dict[str, Any]:
    spec = {
        "name": f"{MODEL}:latest",
        "size_bytes": "4GB",
        "load_seconds": 10,
        "tokens_per_second": cfg.tokens_per_second,
        "prompt_tokens_per_second": cfg.prompt_tokens_per_second,
        "response_tokens": 100_000,  # answers end at max_tokens
    }
    return {
        "time_scale": cfg.time_scale,
        "catalogue": [spec],
        "nodes": [
            {"name": f"node-{i}", "host": "127.0.0.1", "port": 0, "vram": "24GiB",
             "num_parallel": cfg.slots, "max_queue": 4096, "loaded": [MODEL]}
            for i in range(cfg.pods)
        ],
    }  # fmt: skip


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
                "max_tokens": rng.randint(lo, hi),
                "headers": {"Authorization": f"Bearer {KEYS[tenant]}", "X-Priority": cls},
                "tags": {
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


@functools.cache
def balancer_flags() -> frozenset[str]:
    """The flags this checkout's balancer accepts (late binding needs ``--queue``)."""
    out = subprocess.run(
        [common.PY, "-m", "ollama_fleet", "balancer", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return frozenset(w.rstrip(",") for w in out.split() if w.startswith("--"))


def policy_flags(policy: str, cfg: Config) -> list[str] | None:
    """Balancer flags for ``policy``, or None when this balancer cannot run it."""
    has_queue = "--queue" in balancer_flags()
    s = cfg.time_scale
    if policy == "early":
        return ["--no-queue"] if has_queue else []
    if policy == "late":
        if not has_queue:
            return None
        return [
            "--queue",
            "--queue-max-wait", f"{cfg.timeout * s:g}",
            "--queue-batch-aging", f"{cfg.batch_aging * s:g}",
        ]  # fmt: skip
    raise ValueError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")


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
        proc, base = common.start_balancer(
            procs, urls, extra=extra, backend_opts=f";slots={cfg.slots};vram=24GiB"
        )
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
        cpu0 = proc.cpu()
        sampler.start()
        try:
            res = common.run_loadgen(tmp, spec, timeout=float(str(spec["hard_timeout"])) + 30)
        finally:
            stop.set()
            sampler.join(10)
        cpu = proc.cpu() - cpu0
    recs = res["records"]
    for r in recs:
        for k in ("ttft", "e2e", "at"):
            if k in r:
                r[k] = r[k] / s  # emulated seconds
    return {
        "policy": policy,
        "records": recs,
        "elapsed": res["elapsed"] / s,
        "ollama_waiting_peak": max(waiting, default=0),
        "ollama_waiting_mean": sum(waiting) / len(waiting) if waiting else 0.0,
        "proxy_cpu_s": cpu,
    }


def _stats(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ttft"] for r in recs if r.get("ok")]
    return {
        "requests": len(recs),
        "failed": sum(1 for r in recs if not r.get("ok")),
        "ttft_p50": common.pct(ok, 50),
        "ttft_p99": common.pct(ok, 99),
    }


def summarise(run: dict[str, Any], alone: dict[str, Any] | None) -> dict[str, Any]:
    recs = run["records"]
    groups: dict[str, dict[str, Any]] = {"all": _stats(recs)}
    for t in TENANTS:
        groups[f"tenant {t}"] = _stats([r for r in recs if r.get("tenant") == t])
    for c in CLASSES:
        groups[f"class {c}"] = _stats([r for r in recs if r.get("class") == c])
    for length in ("short", "long"):
        groups[f"{length} requests"] = _stats([r for r in recs if r.get("length") == length])
    if alone is not None:
        groups["light alone"] = _stats(alone["records"])
    return {
        "policy": run["policy"],
        "groups": groups,
        "ollama_waiting_peak": run["ollama_waiting_peak"],
        "ollama_waiting_mean": run["ollama_waiting_mean"],
        "proxy_cpu_s": run["proxy_cpu_s"],
        "records": recs,
        "alone_records": alone["records"] if alone is not None else [],
    }


def run(cfg: Config) -> dict[str, Any]:
    unknown = sorted(set(cfg.policies) - set(POLICIES))
    if unknown:
        raise SystemExit(f"saturation: unknown policies {unknown} (known: {', '.join(POLICIES)})")
    trace = make_trace(cfg)
    light = [it for it in trace if it["tags"]["tenant"] == "light"]
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for policy in cfg.policies:
        if policy_flags(policy, cfg) is None:
            skipped.append(policy)
            print(f"  {policy:6s} skipped: this balancer has no --queue flag yet", flush=True)
            continue
        mixed = run_one(cfg, policy, trace)
        alone = run_one(cfg, policy, light) if cfg.alone else None
        row = summarise(mixed, alone)
        g = row["groups"]
        print(
            f"  {policy:6s} ttft p99 all={g['all']['ttft_p99']:.2f}s "
            f"light={g['tenant light']['ttft_p99']:.2f}s "
            f"(alone {g.get('light alone', {}).get('ttft_p99', float('nan')):.2f}s) "
            f"failed={g['all']['failed']}",
            flush=True,
        )
        rows.append(row)
    cfg_doc = {**cfg.__dict__, "capacity_rps": cfg.capacity(), "mean_service_s": cfg.mean_service()}
    return {"rows": rows, "skipped": skipped, "config": cfg_doc, "trace_size": len(trace)}


GROUPS = (
    "all", "tenant heavy", "tenant light", "light alone", "class critical", "class standard",
    "class batch", "short requests", "long requests",
)  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    head = (
        f"{c['pods']} pods x {c['slots']} slots, one model resident everywhere; capacity "
        f"{c['capacity_rps']:.2f} req/s (mean slot time {c['mean_service_s']:.2f} s); offered "
        f"{c['overload']}x capacity for {c['overload_seconds']:g} s then {c['underload']}x for "
        f"{c['underload_seconds']:g} s ({doc['trace_size']} requests); heavy sends "
        f"{c['heavy_ratio']:g}x light; {100 * c['long_fraction']:.0f}% long; seed {c['seed']}; "
        f"time_scale {c['time_scale']} (times in emulated seconds)\n\n"
    )
    rows = []
    for r in doc["rows"]:
        for name in GROUPS:
            g = r["groups"].get(name)
            if g is not None:
                rows.append(
                    [r["policy"], name, g["requests"], g["failed"], g["ttft_p50"], g["ttft_p99"]]
                )
    table = common.table(
        ["policy", "group", "requests", "failed", "TTFT p50 s", "TTFT p99 s"], rows
    )
    summary = []
    for r in doc["rows"]:
        g = r["groups"]
        light, alone = g["tenant light"]["ttft_p99"], g.get("light alone", {}).get("ttft_p99")
        summary.append(
            [
                r["policy"],
                g["all"]["ttft_p99"],
                light,
                alone if alone is not None else float("nan"),
                light / alone if alone else float("nan"),
                g["class critical"]["ttft_p99"] / g["class batch"]["ttft_p99"]
                if g["class batch"]["ttft_p99"]
                else float("nan"),
                r["ollama_waiting_peak"],
                r["ollama_waiting_mean"],
                r["proxy_cpu_s"],
            ]
        )
    text = head + table + "\n\n" + common.table(
        [
            "policy", "TTFT p99 all", "light p99 (flood)", "light p99 (alone)", "light ratio",
            "critical/batch p99", "peak waiting in Ollama", "mean waiting in Ollama",
            "proxy CPU s",
        ],
        summary,
    )  # fmt: skip
    by = {r["policy"]: r["groups"] for r in doc["rows"]}
    if "early" in by and "late" in by:
        ratio = by["late"]["all"]["ttft_p99"] / by["early"]["all"]["ttft_p99"]
        text += f"\n\nlate/early overall TTFT p99: {ratio:.2f} (target <= 0.8)"
    for p in doc.get("skipped", []):
        text += f"\n\n{p}: not run (this balancer has no --queue flag yet)"
    return text
