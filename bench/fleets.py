"""Emulated fleets (``ollama-fleet emulate --config`` documents) the benchmarks run on."""

from __future__ import annotations

import random
from typing import Any

GIB = 2**30

#: A model that answers at once: one token, "infinite" decode and prefill rates.
ZERO = {
    "name": "zero:latest",
    "size_bytes": "100MB",
    "load_seconds": 0,
    "tokens_per_second": 1e9,
    "prompt_tokens_per_second": 1e9,
    "response_tokens": 1,
}


def zero_fleet(nodes: int = 2, slots: int = 512) -> dict[str, Any]:
    """Nodes with the zero-latency model resident and slots enough to never queue."""
    return {
        "time_scale": 1.0,
        "catalogue": [ZERO],
        "nodes": [
            {
                "name": f"node-{i}",
                "host": "127.0.0.1",
                "port": 0,
                "num_parallel": slots,
                "max_queue": 4096,
                "loaded": ["zero"],
            }
            for i in range(nodes)
        ],
    }


def stream_fleet(nodes: int, slots: int, tokens: int, rate: float = 20.0) -> dict[str, Any]:
    """Nodes streaming ``tokens`` tokens at ``rate`` tokens/s per stream (50 ms apart)."""
    spec = {
        "name": "streamer:latest",
        "size_bytes": "100MB",
        "load_seconds": 0,
        "tokens_per_second": rate,
        "prompt_tokens_per_second": 1e9,
        "response_tokens": tokens,
    }
    return {
        "time_scale": 1.0,
        "catalogue": [spec],
        "nodes": [
            {"name": f"node-{i}", "host": "127.0.0.1", "port": 0, "num_parallel": slots,
             "max_queue": 4096, "loaded": ["streamer"]}
            for i in range(nodes)
        ],
    }  # fmt: skip


def routing_catalogue(models: int, seed: int = 7) -> list[dict[str, Any]]:
    """``models`` models of 5-9 GB loading in 5-30 s and decoding at 20-80 tokens/s.

    Sizes grow with load time (bigger weights read longer), decode slows with size.
    """
    rng = random.Random(seed)
    out = []
    for i in range(models):
        load = 5 + 25 * i / max(1, models - 1)
        size = 5.0 + 4.0 * (load - 5) / 25 + rng.uniform(-0.3, 0.3)
        out.append(
            {
                "name": f"m{i:02d}:latest",
                "size_bytes": f"{size:.2f}GB",
                "load_seconds": round(load, 1),
                "tokens_per_second": round(80 - 60 * (load - 5) / 25, 1),
                "prompt_tokens_per_second": 1000,
                "response_tokens": 200,
                "kv_bytes_per_token": 0,
            }
        )
    # Popularity rank != load-time rank: shuffle which model is the popular one.
    rng.shuffle(out)
    return out


def resident_fleet(
    model: str,
    pods: int,
    slots: int,
    time_scale: float,
    tokens_per_second: float,
    prompt_tokens_per_second: float,
) -> dict[str, Any]:
    """``pods`` pods of ``slots`` slots, each with ``model`` (4 GB) resident, answering until
    the request's ``max_tokens``: the saturated pools of ``bench saturation`` and ``fairness``."""
    spec = {
        "name": f"{model}:latest",
        "size_bytes": "4GB",
        "load_seconds": 10,
        "tokens_per_second": tokens_per_second,
        "prompt_tokens_per_second": prompt_tokens_per_second,
        "response_tokens": 100_000,  # answers end at max_tokens
    }
    return {
        "time_scale": time_scale,
        "catalogue": [spec],
        "nodes": [
            {"name": f"node-{i}", "host": "127.0.0.1", "port": 0, "vram": "24GiB",
             "num_parallel": slots, "max_queue": 4096, "loaded": [model]}
            for i in range(pods)
        ],
    }  # fmt: skip


def _disk_node(i: int, slots: int, keep_alive: str, installed: list[str]) -> dict[str, Any]:
    """A 16 GiB pod with ``installed`` on disk, room for three loaded models."""
    return {
        "name": f"node-{i}",
        "host": "127.0.0.1",
        "port": 0,
        "vram": "16GiB",
        "num_parallel": slots,
        "max_loaded_models": 3,
        "keep_alive": keep_alive,
        "max_queue": 512,
        "installed": installed,
    }


def routing_fleet(nodes: int, models: int, time_scale: float, slots: int = 4) -> dict[str, Any]:
    """Every node has every model on disk and VRAM for about two of them; nothing loaded."""
    catalogue = routing_catalogue(models)
    return {
        "time_scale": time_scale,
        "catalogue": catalogue,
        "nodes": [_disk_node(i, slots, "5m", [m["name"] for m in catalogue]) for i in range(nodes)],
    }


def many_fleet(nodes: int) -> dict[str, Any]:
    """``nodes`` idle nodes for the control-loop benchmark, all with the zero model on disk."""
    return {
        "time_scale": 1.0,
        "catalogue": [ZERO],
        "nodes": [
            {"name": f"node-{i}", "host": "127.0.0.1", "port": 0, "installed": ["zero"]}
            for i in range(nodes)
        ],
    }


def faults_catalogue(models: int, seed: int = 24) -> list[dict[str, Any]]:
    """``models`` models of 5-7 GB (two fit a 16 GiB pod, three do not) loading in 1-4 s and
    answering 60-160 tokens at 30-80 tokens/s: loads are frequent and matter to TTFT."""
    rng = random.Random(seed)
    return [
        {
            "name": f"f{i:02d}:latest",
            "size_bytes": f"{rng.uniform(5.0, 7.0):.2f}GB",
            "load_seconds": round(rng.uniform(1.0, 4.0), 1),
            "tokens_per_second": round(rng.uniform(30, 80), 1),
            "prompt_tokens_per_second": 1000,
            "response_tokens": rng.randint(60, 160),
            "kv_bytes_per_token": 0,
        }
        for i in range(models)
    ]


def faults_fleet(
    pods: int, models: int, time_scale: float, pinned: int = 3, slots: int = 4
) -> dict[str, Any]:
    """Every pod has every model on disk; the ``pinned`` most popular models (the first of
    the catalogue) are loaded for good on ``pods / pinned`` pods each, as a ModelPool would
    keep them; the rest come and go (``keep_alive`` 30 s, one at a time beside the pinned one)."""
    catalogue = faults_catalogue(models)
    names = [m["name"] for m in catalogue]
    return {
        "time_scale": time_scale,
        "catalogue": catalogue,
        "nodes": [
            {**_disk_node(i, slots, "30s", names), "loaded": [names[i % pinned]] if pinned else []}
            for i in range(pods)
        ],
    }
