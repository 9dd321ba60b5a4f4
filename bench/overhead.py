"""Benchmark 1, proxy overhead: tiny non-streaming chats through nothing, us, nginx, LiteLLM.

One emulator process (two nodes, a zero-latency model resident), each proxy in its own
process, the load generator in a third: the proxy's CPU (utime+stime from /proc) and peak
RSS (VmHWM) are its own.  "Added" latency is the proxy's percentile minus direct's,
measured in the same run at the same concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import common
from .fleets import zero_fleet

PATHS = {
    "/api/chat": {
        "model": "zero",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    },
    "/v1/chat/completions": {
        "model": "zero",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    },
}


@dataclass
class Config:
    concurrency: tuple[int, ...] = (1, 32, 256)
    requests: int = 3000
    warmup: int = 300
    duration: float = 60.0
    targets: tuple[str, ...] = ("direct", "balancer", "nginx")


SMOKE = Config(concurrency=(1, 8), requests=60, warmup=10, duration=20.0)


def run(cfg: Config) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with common.workspace("overhead") as (tmp, procs):
        urls = common.start_emulator(procs, zero_fleet(2))
        endpoints: dict[str, tuple[common.Proc | None, str]] = {"direct": (None, urls[0])}
        if "balancer" in cfg.targets:
            endpoints["balancer"] = common.start_balancer(procs, urls)
        if "nginx" in cfg.targets:
            endpoints["nginx"] = common.start_nginx(procs, urls)
        if "litellm" in cfg.targets:
            endpoints["litellm"] = common.start_litellm(procs, urls, "zero")
        for path, body in PATHS.items():
            for c in cfg.concurrency:
                for target, (proc, base) in endpoints.items():
                    if target == "litellm" and not path.startswith("/v1/"):
                        continue  # LiteLLM speaks only the OpenAI API
                    headers = {"Authorization": "Bearer sk-bench"} if target == "litellm" else {}
                    # LiteLLM is ~100x slower: cap its count so the run stays bounded.
                    n = cfg.requests if target != "litellm" else max(c * 2, cfg.requests // 10)
                    spec = {
                        "mode": "closed",
                        "url": base + path,
                        "body": body,
                        "headers": headers,
                        "concurrency": c,
                        "requests": n,
                        "warmup": min(cfg.warmup, n),
                        "duration": cfg.duration,
                    }
                    cpu0 = proc.cpu() if proc else 0.0
                    res = common.run_loadgen(tmp, spec, timeout=cfg.duration * 3 + 30)
                    cpu = (proc.cpu() - cpu0) if proc else 0.0
                    lat = res["latencies"]
                    done = res["completed"]
                    rows.append(
                        {
                            "target": target,
                            "path": path,
                            "concurrency": c,
                            "completed": done,
                            "errors": sum(res["errors"].values()),
                            "rps": done / res["elapsed"] if res["elapsed"] else 0.0,
                            "p50_ms": common.pct(lat, 50) * 1e3,
                            "p99_ms": common.pct(lat, 99) * 1e3,
                            "cpu_s_per_1k": cpu / done * 1000 if proc and done else float("nan"),
                            "latencies_ms": [x * 1e3 for x in lat[:: max(1, len(lat) // 2000)]],
                        }
                    )
                    print(
                        f"  {target:9s} {path:22s} c={c:<4d} {rows[-1]['rps']:8.0f} req/s "
                        f"p50 {rows[-1]['p50_ms']:.2f} ms",
                        flush=True,
                    )
        rss = {t: (p.rss() if p else float("nan")) for t, (p, _) in endpoints.items()}
    direct = {(r["path"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    for r in rows:
        d = direct[(r["path"], r["concurrency"])]
        r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
        r["rss_mib"] = rss[r["target"]]
    return {"rows": rows, "config": cfg.__dict__}


HEADERS = [
    "target", "path", "conc", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
    "CPU s/1k req", "peak RSS MiB", "errors",
]  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    rows = [
        [
            r["target"], r["path"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
            r["added_p50_ms"], r["added_p99_ms"], r["cpu_s_per_1k"], r["rss_mib"], r["errors"],
        ]
        for r in doc["rows"]
    ]  # fmt: skip
    return common.table(HEADERS, rows)
