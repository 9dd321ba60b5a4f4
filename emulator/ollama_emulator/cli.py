"""``ollama-fleet emulate``: serve N emulated Ollama nodes until interrupted.

Configuration is layered: the built-in fleet (or ``--config FILE``), then the
``OLLAMA_*`` variables a real server reads (as defaults for every node), then
flags.  Addresses: ``--base-ip 127.0.0.2 --port 11434`` gives 127.0.0.2:11434,
127.0.0.3:11434, …; ``--base-ip 127.0.0.1 --port 0`` gives free ports;
``--same-ip --port 11434`` gives 127.0.0.1:11434, :11435, ….
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ollama_wire.durations import FOREVER
from ollama_wire.loop import run as run_loop

from .catalogue import parse_size
from .config import FleetConfig, NodeConfig, _seconds, default_fleet, load_config
from .fleet import EmulatedFleet

__all__ = ["build_config", "configure", "run"]

_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "OLLAMA_NUM_PARALLEL": ("num_parallel", int),
    "OLLAMA_MAX_QUEUE": ("max_queue", int),
    "OLLAMA_MAX_LOADED_MODELS": ("max_loaded_models", int),
    "OLLAMA_KEEP_ALIVE": ("keep_alive", _seconds),
    "OLLAMA_CONTEXT_LENGTH": ("context_length", int),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Every node serves Ollama's API plus GET /-/emulator/state, GET "
        "/-/emulator/generations (slot, cached tokens and outcome of the last ones) and "
        "POST/DELETE /-/emulator/faults (JSON: fail_next{count,status,message,body,paths}, "
        "hang{times,paths}, drop_after{chunks,times,paths}, slow{factor,latency}, "
        "go_away{seconds}, clear). OLLAMA_NUM_PARALLEL, OLLAMA_MAX_QUEUE, "
        "OLLAMA_MAX_LOADED_MODELS, OLLAMA_KEEP_ALIVE and OLLAMA_CONTEXT_LENGTH are "
        "read as node defaults; flags win."
    )

    def add(*flags: str, **kwargs: Any) -> None:
        # SUPPRESS keeps "(default: None)" out of --help; build_config reads with getattr.
        parser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)

    add("--config", metavar="FILE", help="YAML fleet file (nodes, defaults, catalogue, time_scale)")
    add("--nodes", type=int, help="number of nodes (default: the config's, or 3 built in)")
    add("--base-ip", help="address of the first node; each next node gets the next IP")
    add("--same-ip", action="store_true", help="all nodes on --base-ip, consecutive ports")
    add("--port", type=int, help="port of every node (0 = a free one each)")
    add("--time-scale", type=float, help="multiply every emulated duration (0.01 = 100x faster)")
    add("--vram", help="VRAM per node, e.g. 24GiB")
    add("--num-parallel", type=int, help="slots per loaded model (OLLAMA_NUM_PARALLEL)")
    add("--max-queue", type=int, help="pending loads before 503 (OLLAMA_MAX_QUEUE)")
    add("--max-loaded-models", type=int, help="resident models per node")
    add("--keep-alive", help="default keep_alive: 5m, 1h, -1 (forever), 0")
    add("--context-length", type=int, help="default num_ctx (default: by VRAM tier)")
    add("--pull-bandwidth", help="registry download rate per node, e.g. 100MB (per second)")
    add("--installed", help="comma-separated models on disk on every node")
    add("--loaded", help="comma-separated models resident at start on every node")
    add("--print-config", action="store_true", help="print the resolved fleet as JSON and exit")


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> FleetConfig:
    args = argparse.Namespace(**{**{k: None for k in _FLAGS}, **vars(args)})
    base = load_config(args.config) if args.config else default_fleet()
    overrides: dict[str, Any] = {}
    for var, (key, convert) in _ENV.items():
        if environ.get(var):
            overrides[key] = convert(environ[var])
    flags = {
        "vram_bytes": parse_size(args.vram) if args.vram else None,
        "num_parallel": args.num_parallel,
        "max_queue": args.max_queue,
        "max_loaded_models": args.max_loaded_models,
        "keep_alive": _seconds(args.keep_alive) if args.keep_alive is not None else None,
        "context_length": args.context_length,
        "pull_bandwidth": float(parse_size(args.pull_bandwidth)) if args.pull_bandwidth else None,
        "installed": _names(args.installed),
        "loaded": _names(args.loaded),
    }
    overrides |= {k: v for k, v in flags.items() if v is not None}
    nodes = list(base.nodes)
    count = args.nodes or len(nodes) or 3
    template = nodes[-1] if nodes else NodeConfig(name="node-0")
    while len(nodes) < count:
        nodes.append(dataclasses.replace(template, name=f"node-{len(nodes)}"))
    nodes = nodes[:count]
    first_ip = ipaddress.IPv4Address(args.base_ip) if args.base_ip else None
    resolved = []
    for i, node in enumerate(nodes):
        changes = dict(overrides)
        if first_ip is not None:
            changes["host"] = str(first_ip if args.same_ip else first_ip + i)
        if args.port is not None:
            step = i if args.same_ip and args.port else 0
            changes["port"] = args.port + step
        resolved.append(dataclasses.replace(node, **changes))
    for node in resolved:
        if not ipaddress.IPv4Address(node.host).is_loopback:
            raise SystemExit(f"node {node.name}: {node.host} is not a loopback address")
    scale = args.time_scale if args.time_scale is not None else base.time_scale
    return FleetConfig(nodes=resolved, catalogue=base.catalogue, time_scale=scale)


_FLAGS = (
    "config", "nodes", "base_ip", "same_ip", "port", "time_scale", "vram", "num_parallel",
    "max_queue", "max_loaded_models", "keep_alive", "context_length", "pull_bandwidth",
    "installed", "loaded", "print_config",
)  # fmt: skip


def _names(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _describe(config: FleetConfig) -> dict[str, Any]:
    def node(n: NodeConfig) -> dict[str, Any]:
        doc = dataclasses.asdict(n)
        for key in ("keep_alive", "preload_keep_alive"):
            doc[key] = -1 if doc[key] == FOREVER else doc[key]
        doc["installed"], doc["loaded"] = list(n.installed), list(n.loaded)
        return doc

    return {
        "time_scale": config.time_scale,
        "nodes": [node(n) for n in config.nodes],
        "catalogue": sorted(s.name for s in config.catalogue),
    }


async def serve(config: FleetConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with EmulatedFleet(config) as fleet:
        for node in fleet.nodes:
            loaded = ", ".join(node.config.loaded) or "-"
            print(f"{node.name}\t{node.url}\tloaded: {loaded}", flush=True)
        # After the nodes, so "one line per node first" stays true for scripts.
        print(f"registry\t{fleet.registry.url}\tmanifests of the catalogue", flush=True)
        await stop.wait()


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = build_config(args, environ)
    if getattr(args, "print_config", False):
        json.dump(_describe(config), sys.stdout, indent=2)
        print()
        return 0
    run_loop(serve(config), environ)
    return 0
