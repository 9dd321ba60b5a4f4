"""Benchmark 2, streaming: many concurrent 20 tokens/s streams through us and nginx.

The emulator paces each stream against a schedule (a token every 50 ms); the client
process records each NDJSON line's arrival.  "Added" inter-chunk p99 is the proxy's gap
p99 minus direct's at the same stream count, so the emulator's and the client's own
jitter on this 2-core machine cancel out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import common
from .fleets import stream_fleet


@dataclass
class Config:
    streams: tuple[int, ...] = (100, 500)
    tokens: int = 100  # 5 s per stream at 20 tokens/s
    nodes: int = 2
    targets: tuple[str, ...] = ("direct", "balancer", "nginx")


SMOKE = Config(streams=(10,), tokens=10)


def run(cfg: Config) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    slots = max(cfg.streams)
    body = {
        "model": "streamer",
        "messages": [{"role": "user", "content": "stream please"}],
        "stream": True,
    }
    with common.workspace("streaming") as (tmp, procs):
        urls = common.start_emulator(procs, stream_fleet(cfg.nodes, slots, cfg.tokens))
        endpoints: dict[str, tuple[common.Proc | None, str]] = {"direct": (None, urls[0])}
        if "balancer" in cfg.targets:
            endpoints["balancer"] = common.start_balancer(procs, urls)
        if "nginx" in cfg.targets:
            endpoints["nginx"] = common.start_nginx(procs, urls)
        for n in cfg.streams:
            for target, (proc, base) in endpoints.items():
                duration = cfg.tokens / 20 * 4 + 30
                spec = {
                    "mode": "stream",
                    "url": base + "/api/chat",
                    "body": body,
                    "streams": n,
                    "ramp": 1.0,
                    "duration": duration,
                }
                cpu0 = proc.cpu() if proc else 0.0
                res = common.run_loadgen(tmp, spec, timeout=duration + 30)
                cpu = (proc.cpu() - cpu0) if proc else float("nan")
                gaps = [g * 1e3 for g in res["gaps"]]
                rows.append(
                    {
                        "target": target,
                        "streams": n,
                        "chunks": res["chunks"],
                        "chunks_per_s": res["chunks"] / res["span"] if res["span"] else 0.0,
                        "gap_p50_ms": common.pct(gaps, 50),
                        "gap_p99_ms": common.pct(gaps, 99),
                        "gap_max_ms": max(gaps) if gaps else float("nan"),
                        "ttft_p50_ms": common.pct(res["ttft"], 50) * 1e3,
                        "proxy_cpu_s": cpu,
                        "cpu_percent": cpu / res["elapsed"] * 100 if proc else float("nan"),
                        "errors": sum(res["errors"].values()),
                        "gaps_sample": gaps[:: max(1, len(gaps) // 3000)],
                    }
                )
                print(
                    f"  {target:9s} streams={n:<4d} {rows[-1]['chunks_per_s']:7.0f} chunks/s "
                    f"gap p99 {rows[-1]['gap_p99_ms']:.1f} ms",
                    flush=True,
                )
    direct = {r["streams"]: r for r in rows if r["target"] == "direct"}
    for r in rows:
        r["added_gap_p99_ms"] = r["gap_p99_ms"] - direct[r["streams"]]["gap_p99_ms"]
        r["gap_p99_vs_nominal_ms"] = r["gap_p99_ms"] - 50.0
    return {"rows": rows, "config": cfg.__dict__}


HEADERS = [
    "target", "streams", "chunks", "chunks/s", "gap p50 ms", "gap p99 ms", "gap max ms",
    "p99 − 50 ms nominal", "added p99 vs direct ms", "proxy CPU s", "proxy CPU %", "errors",
]  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    rows = [
        [
            r["target"], r["streams"], r["chunks"], r["chunks_per_s"], r["gap_p50_ms"],
            r["gap_p99_ms"], r["gap_max_ms"], r["gap_p99_vs_nominal_ms"],
            r["added_gap_p99_ms"], r["proxy_cpu_s"], r["cpu_percent"], r["errors"],
        ]
        for r in doc["rows"]
    ]  # fmt: skip
    return common.table(HEADERS, rows)
