"""``python -m bench plots``: PNGs for docs/benchmarks.md from bench/out/*.json.

The only module that imports matplotlib (the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import common

IMG = common.ROOT / "docs" / "img"


def _load(name: str) -> dict[str, Any] | None:
    path = common.OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cdf(ax: Any, values: list[float], label: str) -> None:
    if not values:
        return
    xs = sorted(values)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.plot(xs, ys, label=label, linewidth=1.4)


def _finish_axes(ax: Any, title: str, xlabel: str, ylabel: str, legend: int = 8) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def _save(fig: Any, name: str) -> Path:
    fig.tight_layout()
    out = IMG / name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def overhead(doc: dict[str, Any]) -> Path:
    paths = sorted({r["path"] for r in doc["rows"]})
    concs = sorted({r["concurrency"] for r in doc["rows"]})
    fig, axes = plt.subplots(
        len(paths), len(concs), figsize=(4 * len(concs), 3.2 * len(paths)), squeeze=False
    )
    for i, path in enumerate(paths):
        for j, c in enumerate(concs):
            ax = axes[i][j]
            for r in doc["rows"]:
                if r["path"] == path and r["concurrency"] == c:
                    _cdf(ax, r["latencies_ms"], r["target"])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            _finish_axes(
                ax, f"{path}, concurrency {c}", "latency (ms, log)", "fraction of requests"
            )
    fig.suptitle("Proxy overhead: latency CDF of tiny non-streaming requests")
    return _save(fig, "overhead-latency-cdf.png")


def streaming(doc: dict[str, Any]) -> Path:
    counts = sorted({r["streams"] for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 3.5), squeeze=False)
    for j, n in enumerate(counts):
        ax = axes[0][j]
        for r in doc["rows"]:
            if r["streams"] == n:
                _cdf(ax, r["gaps_sample"], r["target"])
        ax.axvline(50, color="grey", linestyle=":", label="nominal 50 ms")
        ax.set_xlim(0, 150)
        _finish_axes(
            ax,
            f"{n} concurrent streams at 20 tokens/s",
            "inter-chunk gap seen by the client (ms)",
            "fraction of gaps",
        )
    return _save(fig, "streaming-gap-cdf.png")


def routing(doc: dict[str, Any], prefix: str = "routing") -> list[Path]:
    """TTFT CDFs and cumulative cold loads per scenario; with ``--repeats``, every run of a
    policy in its colour (labelled once)."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in doc["rows"]))
    policies = list(dict.fromkeys(r["policy"] for r in doc["rows"]))
    colours = {p: f"C{i % 10}" for i, p in enumerate(policies)}
    outs = []

    def style(r: dict[str, Any], seen: set[str]) -> dict[str, Any]:
        first = r["policy"] not in seen
        seen.add(r["policy"])
        return {
            "color": colours[r["policy"]],
            "label": r["policy"] if first else None,
            "linewidth": 1.4 if first else 0.8,
            "alpha": 1.0 if first else 0.6,
        }

    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.8), squeeze=False)
    for j, sc in enumerate(scenarios):
        ax, seen = axes[0][j], set[str]()
        for r in doc["rows"]:
            if r["scenario"] == sc and r["ttft_all"]:
                xs = sorted(r["ttft_all"])
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, **style(r, seen))
        ax.set_xscale("symlog", linthresh=0.1)
        _finish_axes(
            ax,
            f"TTFT, {sc} trace",
            "time to first token (emulated s, symlog)",
            "fraction of requests",
            legend=7,
        )
    outs.append(_save(fig, f"{prefix}-ttft-cdf.png"))

    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.8), squeeze=False)
    for j, sc in enumerate(scenarios):
        ax, seen = axes[0][j], set[str]()
        for r in doc["rows"]:
            if r["scenario"] == sc and r["loads_series"]:
                times = [t for t, _ in r["loads_series"]]
                loads = [n for _, n in r["loads_series"]]
                ax.plot(times, loads, **style(r, seen))
        _finish_axes(
            ax,
            f"Cold loads over time, {sc} trace",
            "emulated seconds since the trace started",
            "cumulative model loads (all nodes)",
            legend=7,
        )
    outs.append(_save(fig, f"{prefix}-cold-loads.png"))
    return outs


def saturation(doc: dict[str, Any], sim: dict[str, Any] | None) -> Path:
    """TTFT CDFs by tenant and by class; simulated policies (bench.queue_sim) dashed, only
    while the real run lacks late binding."""
    runs = [(r, "", "-") for r in doc["rows"]]
    if sim is not None and "late" not in {r["policy"] for r in doc["rows"]}:
        runs += [(r, " (simulated)", "--") for r in sim["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for r, suffix, style in runs:
        recs = [x for x in r["records"] if x.get("ok")]
        for tenant in ("heavy", "light"):
            xs = sorted(x["ttft"] for x in recs if x.get("tenant") == tenant)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            axes[0][0].plot(xs, ys, style, label=f"{r['policy']}{suffix}: {tenant}", linewidth=1.3)
        alone = sorted(x["ttft"] for x in r["alone_records"] if x.get("ok"))
        if alone and not suffix:
            ys = [(i + 1) / len(alone) for i in range(len(alone))]
            axes[0][0].plot(alone, ys, ":", label=f"{r['policy']}: light alone", linewidth=1.3)
        for cls in ("critical", "standard", "batch"):
            xs = sorted(x["ttft"] for x in recs if x.get("class") == cls)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            axes[0][1].plot(xs, ys, style, label=f"{r['policy']}{suffix}: {cls}", linewidth=1.3)
    for ax, what in zip(axes[0], ("tenant", "class"), strict=True):
        ax.set_xscale("symlog", linthresh=1.0)
        _finish_axes(
            ax, f"TTFT by {what} at saturation", "TTFT (emulated s, symlog)", "fraction", legend=7
        )
    return _save(fig, "saturation-ttft-cdf.png")


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    if doc := _load("overhead"):
        made.append(overhead(doc))
    if doc := _load("streaming"):
        made.append(streaming(doc))
    if doc := _load("routing"):
        made += routing(doc)
    if doc := _load("routing-replicas"):
        made += routing(doc, "routing-replicas")
    if doc := _load("saturation"):
        made.append(saturation(doc, _load("queue-sim")))
    for p in made:
        print(p)
