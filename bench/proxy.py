"""Benchmark 0, the proxy in isolation: CPU per request and per streamed chunk, pinned.

The proxy under test (the balancer, nginx, optionally the balancer of another git ref)
runs alone on one CPU (``taskset``); the emulator and the load generators share the
other.  Tiny POSTs come from ``wrk`` (one thread, a Lua script for the body), streams
from :mod:`bench.loadgen`.  The figures that matter are CPU microseconds per request and
per streamed chunk, from the proxy's utime+stime in /proc over the measured phase: on a
machine shared with other work, CPU time per unit of work stays put where latencies do
not.  Latency added at concurrency 1 and 32 and the inter-chunk p99 added at 100 and 500
streams are measured against the emulator reached directly, in the same run.

``balancer+shared`` is the same balancer with shared state on (issue #12): a slot lease taken
in a real ``redis-server`` (pinned with the emulator, so its CPU is not the proxy's) before
each request and released after it.  What it adds over ``balancer`` (CPU per request, p50 and
p99 latency) is reported from the same run.

``--tracing`` (issue #25) adds the same balancer with OpenTelemetry tracing on, exporting
over OTLP/HTTP to a sink that decodes every span (:mod:`bench.otlp_sink`, on the load
CPU): ``balancer+trace`` samples every request, ``balancer+trace10%`` one in ten (the
batch processor's queue is made large enough that no span is dropped, so the CPU counted
is that of exporting all of them).  ``balancer`` itself is tracing off: no endpoint set.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common
from .fleets import stream_fleet, zero_fleet

BODY = {"model": "zero", "messages": [{"role": "user", "content": "hi"}], "stream": False}
STREAM_BODY = {
    "model": "streamer",
    "messages": [{"role": "user", "content": "stream please"}],
    "stream": True,
}


#: The balancer with shared state on, a local redis-server holding its slot leases.
SHARED = "balancer+shared"
#: The balancer tracing every request, and one in ten, to an OTLP/HTTP sink.
TRACED = {"balancer+trace": "1.0", "balancer+trace10%": "0.1"}


@dataclass
class Config:
    concurrency: tuple[int, ...] = (1, 32)
    seconds: int = 10  # measured wrk run per cell, after `warmup` seconds unmeasured
    warmup: int = 2
    streams: tuple[int, ...] = (100, 500)
    tokens: int = 100  # 5 s per stream at 20 tokens/s
    targets: tuple[str, ...] = ("direct", "balancer", SHARED, "nginx")
    baseline: str | None = None  # a git ref: its balancer runs too, as "balancer@REF"
    log_level: str = "warning"  # the balancer's; "info" adds the per-request log line
    pythons: tuple[str, ...] = ()  # other interpreters: "balancer@py3.12" each
    tracing: bool = False  # also the balancer tracing 100% and 10% of requests (TRACED)


SMOKE = Config(concurrency=(1, 8), seconds=1, warmup=0, streams=(10,), tokens=10)
#: One change against another (``--quick --baseline REF``): CPU per unit, no nginx.
QUICK = Config(
    concurrency=(32,),
    seconds=5,
    warmup=1,
    streams=(500,),
    tokens=60,
    targets=("direct", "balancer"),
)

#: The issue's targets (#18): (label, row key, limit, ratio to nginx at most).
TARGETS = (
    ("CPU per tiny request", "cpu_us_per_req", 150.0, 6.0),
    ("CPU per streamed chunk", "cpu_us_per_chunk", 20.0, 2.0),
)


def _endpoints(
    cfg: Config, procs: common.Procs, tmp: Path, urls: list[str], cores: common.Cores
) -> tuple[dict[str, tuple[common.Proc | None, str]], str]:
    """The proxies to measure, by name, and the OTLP sink's URL ("" without --tracing)."""
    out: dict[str, tuple[common.Proc | None, str]] = {"direct": (None, urls[0])}
    sink_url = ""
    if "balancer" in cfg.targets:
        out["balancer"] = common.start_balancer(
            procs, urls, cpus=cores.proxy, log_level=cfg.log_level
        )
    if SHARED in cfg.targets:
        _, store = common.start_redis(procs, cpus=cores.load)
        out[SHARED] = common.start_balancer(
            procs, urls, cpus=cores.proxy, log_level=cfg.log_level, name="balancer-shared",
            extra=["--shared-state", store],
        )  # fmt: skip
        common.wait_shared([out[SHARED][1]])
    if cfg.baseline:
        src = common.checkout(cfg.baseline, tmp / "baseline")
        name = f"balancer@{cfg.baseline}"
        out[name] = common.start_balancer(
            procs, urls, cpus=cores.proxy, name="baseline", source=src, log_level=cfg.log_level
        )
    for python in cfg.pythons:
        name = f"balancer@py{common.python_version(python)}"
        out[name] = common.start_balancer(
            procs, urls, cpus=cores.proxy, name=name.replace("@", "-"), python=python,
            log_level=cfg.log_level,
        )  # fmt: skip
    if cfg.tracing:
        port = common.free_port()
        sink = procs.start(
            "otlp-sink", [common.PY, str(Path(__file__).with_name("otlp_sink.py")), str(port)],
            cpus=cores.load,
        )  # fmt: skip
        sink_url = f"http://127.0.0.1:{port}"
        common.wait_until(lambda: common.http_get(sink_url + "/count")[0] == 200, 30, "sink", sink)
        for name, ratio in TRACED.items():
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
                # no span dropped: the CPU counted is that of exporting every sampled one
                "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
            out[name] = common.start_balancer(
                procs, urls, cpus=cores.proxy, log_level=cfg.log_level,
                name=name.replace("+", "-").replace("%", ""), env=env,
            )  # fmt: skip
    if "nginx" in cfg.targets:
        out["nginx"] = common.start_nginx(procs, urls, cpus=cores.proxy)
    return out, sink_url


def _spans(sink_url: str) -> int:
    """Spans the sink received so far (0 without a sink)."""
    if not sink_url:
        return 0
    return int(json.loads(common.http_get(sink_url + "/count")[1])["spans"])


def tiny(cfg: Config, cores: common.Cores) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with common.workspace("proxy-tiny") as (tmp, procs):
        urls = common.start_emulator(procs, zero_fleet(2), cpus=cores.load)
        endpoints, sink = _endpoints(cfg, procs, tmp, urls, cores)
        script = common.wrk_script(tmp, BODY)
        for c in cfg.concurrency:
            for target, (proc, base) in endpoints.items():
                url = base + "/api/chat"
                if cfg.warmup:
                    common.run_wrk(url, script, c, cfg.warmup, cores.load)
                spans0 = _spans(sink) if target in TRACED else 0
                cpu0 = proc.cpu() if proc else 0.0
                res = common.run_wrk(url, script, c, cfg.seconds, cores.load)
                if target in TRACED:
                    time.sleep(1.0)  # the batch processor's last export (every 200 ms)
                cpu = proc.cpu() - cpu0 if proc else float("nan")
                n = res["requests"]
                spans = _spans(sink) - spans0 if target in TRACED else 0
                rows.append(
                    {
                        "target": target,
                        "concurrency": c,
                        "requests": n,
                        "rps": n / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0,
                        "p50_ms": res["p50_us"] / 1e3,
                        "p99_ms": res["p99_us"] / 1e3,
                        "cpu_us_per_req": cpu / n * 1e6 if proc and n else float("nan"),
                        "errors": res["socket_errors"] + res["status_errors"] + res["timeouts"],
                        "spans_per_req": spans / n if target in TRACED and n else float("nan"),
                    }
                )
                r = rows[-1]
                print(
                    f"  {target:18s} c={c:<3d} {r['rps']:7.0f} req/s p50 {r['p50_ms']:.2f} ms "
                    f"CPU {r['cpu_us_per_req']:.0f} µs/req",
                    flush=True,
                )
    direct = {r["concurrency"]: r for r in rows if r["target"] == "direct"}
    for r in rows:
        d = direct[r["concurrency"]]
        r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
    return rows


def streaming(cfg: Config, cores: common.Cores) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with common.workspace("proxy-stream") as (tmp, procs):
        fleet = stream_fleet(2, max(cfg.streams), cfg.tokens)
        urls = common.start_emulator(procs, fleet, cpus=cores.load)
        endpoints, _sink = _endpoints(cfg, procs, tmp, urls, cores)
        for n in cfg.streams:
            for target, (proc, base) in endpoints.items():
                spec = {
                    "mode": "stream",
                    "url": base + "/api/chat",
                    "body": STREAM_BODY,
                    "streams": n,
                    "ramp": 1.0,
                    "duration": cfg.tokens / 20 * 4 + 30,
                }
                cpu0 = proc.cpu() if proc else 0.0
                res = common.run_loadgen(tmp, spec, float(str(spec["duration"])) + 30, cores.load)
                cpu = proc.cpu() - cpu0 if proc else float("nan")
                gaps = [g * 1e3 for g in res["gaps"]]
                chunks = res["chunks"]
                rows.append(
                    {
                        "target": target,
                        "streams": n,
                        "chunks": chunks,
                        "chunks_per_s": chunks / res["span"] if res["span"] else 0.0,
                        "gap_p50_ms": common.pct(gaps, 50),
                        "gap_p99_ms": common.pct(gaps, 99),
                        "cpu_us_per_chunk": cpu / chunks * 1e6 if proc and chunks else float("nan"),
                        "errors": sum(res["errors"].values()),
                    }
                )
                r = rows[-1]
                print(
                    f"  {target:18s} streams={n:<4d} {r['chunks_per_s']:6.0f} chunks/s gap p99 "
                    f"{r['gap_p99_ms']:.1f} ms CPU {r['cpu_us_per_chunk']:.1f} µs/chunk",
                    flush=True,
                )
                time.sleep(0.5)  # let the last streams' connections settle
    direct = {r["streams"]: r for r in rows if r["target"] == "direct"}
    for r in rows:
        r["added_gap_p99_ms"] = r["gap_p99_ms"] - direct[r["streams"]]["gap_p99_ms"]
    return rows


def run(cfg: Config) -> dict[str, Any]:
    cores = common.split_cores()
    print(f"  pinning: {cores.describe()}", flush=True)
    tiny_rows = tiny(cfg, cores)
    stream_rows = streaming(cfg, cores)
    return {
        "tiny": tiny_rows,
        "streams": stream_rows,
        "pinning": cores.describe(),
        "summary": summary(tiny_rows, stream_rows),
        "shared_cost": shared_cost(tiny_rows),
        "tracing_cost": tracing_cost(tiny_rows),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "wrk": " ".join(common.wrk_command("URL", Path(tempfile.gettempdir()) / "post.lua", 32, 10))
        if common.wrk_binary()
        else "",
    }


def _mean(rows: list[dict[str, Any]], target: str, key: str) -> float:
    vals = [r[key] for r in rows if r["target"] == target and r[key] == r[key]]
    return sum(vals) / len(vals) if vals else float("nan")


def summary(tiny_rows: list[dict[str, Any]], stream_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per proxy: CPU µs per request (mean over concurrencies) and per chunk (over stream
    counts), and the ratio to nginx's measured in the same run."""
    targets = [t for t in dict.fromkeys(r["target"] for r in tiny_rows) if t != "direct"]
    out: dict[str, Any] = {}
    for t in targets:
        out[t] = {
            "cpu_us_per_req": _mean(tiny_rows, t, "cpu_us_per_req"),
            "cpu_us_per_chunk": _mean(stream_rows, t, "cpu_us_per_chunk"),
        }
    ref = out.get("nginx")
    for vals in out.values():
        for key in ("cpu_us_per_req", "cpu_us_per_chunk"):
            vals[key + "_vs_nginx"] = vals[key] / ref[key] if ref and ref[key] else float("nan")
    return out


def shared_cost(tiny_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What shared state adds to a tiny request, per concurrency: ``balancer+shared`` minus
    ``balancer`` (CPU µs per request, p50 and p99 ms), both measured in this run."""
    by = {(r["target"], r["concurrency"]): r for r in tiny_rows}
    out = []
    for (target, c), on in by.items():
        off = by.get(("balancer", c))
        if target != SHARED or off is None:
            continue
        out.append(
            {
                "concurrency": c,
                "cpu_us_per_req": on["cpu_us_per_req"] - off["cpu_us_per_req"],
                "cpu_ratio": on["cpu_us_per_req"] / off["cpu_us_per_req"]
                if off["cpu_us_per_req"]
                else float("nan"),
                "p50_ms": on["p50_ms"] - off["p50_ms"],
                "p99_ms": on["p99_ms"] - off["p99_ms"],
                "rps_ratio": on["rps"] / off["rps"] if off["rps"] else float("nan"),
            }
        )
    return out


def tracing_cost(tiny_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: CPU µs per tiny request of the balancer with tracing off, on at 100%
    and at 10%, and nginx's, from the same run; spans exported per request."""
    by = {(r["target"], r["concurrency"]): r for r in tiny_rows}
    out = []
    for c in dict.fromkeys(r["concurrency"] for r in tiny_rows):
        off = by.get(("balancer", c))
        if off is None or not any((t, c) in by for t in TRACED):
            continue
        row: dict[str, Any] = {"concurrency": c, "off": off["cpu_us_per_req"]}
        for t in TRACED:
            on = by.get((t, c))
            row[t] = on["cpu_us_per_req"] if on else float("nan")
            row[t + " spans/req"] = on["spans_per_req"] if on else float("nan")
        nginx = by.get(("nginx", c))
        row["nginx"] = nginx["cpu_us_per_req"] if nginx else float("nan")
        out.append(row)
    return out


def render(doc: dict[str, Any]) -> str:
    tiny_t = common.table(
        ["target", "conc", "requests", "req/s", "p50 ms", "p99 ms", "added p50 ms",
         "added p99 ms", "CPU µs/req", "errors"],
        [[r["target"], r["concurrency"], r["requests"], r["rps"], r["p50_ms"], r["p99_ms"],
          r["added_p50_ms"], r["added_p99_ms"], r["cpu_us_per_req"], r["errors"]]
         for r in doc["tiny"]],
    )  # fmt: skip
    stream_t = common.table(
        ["target", "streams", "chunks", "chunks/s", "gap p50 ms", "gap p99 ms",
         "added p99 ms", "CPU µs/chunk", "errors"],
        [[r["target"], r["streams"], r["chunks"], r["chunks_per_s"], r["gap_p50_ms"],
          r["gap_p99_ms"], r["added_gap_p99_ms"], r["cpu_us_per_chunk"], r["errors"]]
         for r in doc["streams"]],
    )  # fmt: skip
    rows = []
    for target, vals in doc["summary"].items():
        rows.append(
            [target, vals["cpu_us_per_req"], vals["cpu_us_per_req_vs_nginx"],
             vals["cpu_us_per_chunk"], vals["cpu_us_per_chunk_vs_nginx"]]
        )  # fmt: skip
    summary_t = common.table(["proxy", "CPU µs/req", "× nginx", "CPU µs/chunk", "× nginx"], rows)
    cost = doc.get("shared_cost") or []
    cost_t = ""
    if cost:
        cost_rows = [
            [x["concurrency"], x["cpu_us_per_req"], x["cpu_ratio"], x["p50_ms"], x["p99_ms"],
             x["rps_ratio"]]
            for x in cost
        ]  # fmt: skip
        cost_t = "\n\nAdded by shared state (balancer+shared − balancer, same run):\n\n" + (
            common.table(["conc", "CPU µs/req", "CPU ×", "p50 ms", "p99 ms", "req/s ×"], cost_rows)
        )
    tracing = doc.get("tracing_cost") or []
    if tracing:
        t100, t10 = TRACED
        trace_rows = [
            [x["concurrency"], x["off"], x[t100], x[t100] - x["off"], x[t100 + " spans/req"],
             x[t10], x[t10] - x["off"], x["nginx"]]
            for x in tracing
        ]  # fmt: skip
        cost_t += "\n\nTracing (CPU µs per tiny request, same run):\n\n" + common.table(
            ["conc", "off", "on 100%", "added", "spans/req", "on 10%", "added", "nginx"],
            trace_rows,
        )
    return (
        f"Pinning: {doc['pinning']}.\n\n"
        f"Tiny POST /api/chat (wrk, one thread):\n\n{tiny_t}\n\n"
        f"Streams of 20 tokens/s (bench.loadgen):\n\n{stream_t}\n\n"
        f"CPU per unit of work (targets: ≤ 150 µs/req and ≤ 6× nginx; ≤ 20 µs/chunk and "
        f"≤ 2× nginx):\n\n{summary_t}{cost_t}"
    )
