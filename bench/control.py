"""Benchmark 4, control loop: the balancer polling many emulated backends.

One emulator process serves ``backends`` idle nodes; the balancer polls each one's
``/api/ps`` and ``/api/tags`` at the default interval (2 s).  Measured: the balancer's CPU
over a quiet window (% of one core), then how long a residency change on one node (a
model loaded, then unloaded, directly on the node) takes to show in the balancer's
``/api/ps`` — the same snapshot routing reads.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from . import common
from .fleets import many_fleet


@dataclass
class Config:
    backends: int = 200
    window: float = 30.0  # seconds of quiet polling measured
    trials: int = 5
    poll_interval: float | None = None  # None = the balancer's default


SMOKE = Config(backends=20, window=4.0, trials=1)


def _resident(base: str) -> bool:
    doc = json.loads(common.http_get(base + "/api/ps")[1])
    return any(m.get("name", "").startswith("zero") for m in doc.get("models", []))


def _until(base: str, want: bool, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _resident(base) == want:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("nan")


def run(cfg: Config) -> dict[str, Any]:
    rng = random.Random(1)
    with common.workspace("control") as (_tmp, procs):
        urls = common.start_emulator(procs, many_fleet(cfg.backends))
        extra = ["--poll-interval", str(cfg.poll_interval)] if cfg.poll_interval else []
        proc, base = common.start_balancer(procs, urls, extra=extra)
        # Every backend polled at least once, then a couple of intervals to settle.
        common.wait_until(
            lambda: (
                len(json.loads(common.http_get(base + "/readyz")[1])["routable"]) == cfg.backends
            ),
            60,
            "all backends routable",
            proc,
        )
        time.sleep(3)
        cpu0, t0 = proc.cpu(), time.monotonic()
        time.sleep(cfg.window)
        cpu = proc.cpu() - cpu0
        elapsed = time.monotonic() - t0
        load, unload = [], []
        for _ in range(cfg.trials):
            node = rng.choice(urls)
            common.http_post(node + "/api/generate", {"model": "zero", "keep_alive": "10m"})
            load.append(_until(base, True, 30))
            common.http_post(node + "/api/generate", {"model": "zero", "keep_alive": 0})
            unload.append(_until(base, False, 30))
        rss = proc.rss()
    return {
        "backends": cfg.backends,
        "window_s": elapsed,
        "cpu_seconds": cpu,
        "cpu_percent": cpu / elapsed * 100,
        "propagation": load + unload,
        "load_visible_s": load,
        "unload_visible_s": unload,
        "rss_mib": rss,
        "config": cfg.__dict__,
    }


def render(doc: dict[str, Any]) -> str:
    load, unload = doc["load_visible_s"], doc["unload_visible_s"]
    rows = [
        [
            doc["backends"], doc["window_s"], doc["cpu_seconds"], doc["cpu_percent"],
            common.pct(load, 50), max(load), common.pct(unload, 50), max(unload), doc["rss_mib"],
        ]
    ]  # fmt: skip
    headers = [
        "backends", "window s", "balancer CPU s", "% of one core", "load visible p50 s",
        "load visible max s", "unload visible p50 s", "unload visible max s", "peak RSS MiB",
    ]  # fmt: skip
    return common.table(headers, rows)
