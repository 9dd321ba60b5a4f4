"""A faithful Ollama emulator: N independent emulated servers in one process.

It follows docs/ollama.md (wire shapes, error bodies, scheduler,
keep_alive, pull progress, names) so the balancer's tests, benchmarks and demo
measure something real.  Python API::

    from ollama_emulator import (
        EmulatedFleet, FleetConfig, NodeConfig, ModelSpec, default_catalogue, load_config,
    )

    config = FleetConfig(
        nodes=[NodeConfig(name="node-a", host="127.0.0.2", port=0, vram_bytes=24 * 2**30,
                          num_parallel=1, installed=["llama3.2"], loaded=["llama3.2"])],
        catalogue=default_catalogue(),   # or default_catalogue().with_specs([ModelSpec(...)])
        time_scale=0.01,                 # every emulated duration × 0.01
    )
    async with EmulatedFleet(config) as fleet:
        node = fleet.nodes[0]            # or fleet.node("node-a")
        node.url                         # "http://127.0.0.2:45123"
        node.stats                       # Stats: requests per path, generations_*, loads_*,
                                         #   evictions, unloads, rejected_busy, pulls_*,
                                         #   prompt_tokens(_cached), continuation_*
        node.faults.fail_next(3, status=503, message="boom")   # paths=("/api/chat",) to target
        node.faults.hang()               # accept, never answer (times=N for a few requests)
        node.faults.drop_after(chunks=2) # abort the connection after 2 body chunks
        node.faults.slow(4.0, latency=0.5)  # 4× slower tokens, +0.5 s per request
        node.faults.clear()
        await node.stop_listening(); await node.start_listening()  # connection refused, then back
        await node.restart()             # pod restart: nothing loaded any more
        node.scheduler.runners           # {digest: Runner(name, num_ctx, refcount, in_flight, …)}
        node.scheduler.loading, node.scheduler.pending

Each node also serves ``GET /-/emulator/state`` (runners, queue, stats,
faults as JSON), ``GET /-/emulator/generations`` (the last generations: slot,
prompt and cached tokens, continuation or not, how each ended; also
``node.stats.generations``) and ``POST /-/emulator/faults`` with e.g.
``{"fail_next": {"count": 2, "status": 503}, "hang": {"times": 1},
"drop_after": {"chunks": 3}, "slow": {"factor": 2}, "go_away": {"seconds": 5},
"clear": true}`` (``DELETE /-/emulator/faults`` clears).

Command line: ``ollama-fleet emulate --help``.
"""

from __future__ import annotations

from .catalogue import Catalogue, ModelSpec, default_catalogue
from .clock import Clock, ScaledClock
from .config import FleetConfig, NodeConfig, default_fleet, load_config
from .faults import Faults
from .fleet import EmulatedFleet
from .node import EmulatedNode
from .scheduler import Runner, Scheduler, ServerBusy
from .stats import GenerationRecord, Stats

__all__ = [
    "Catalogue",
    "Clock",
    "EmulatedFleet",
    "EmulatedNode",
    "Faults",
    "FleetConfig",
    "GenerationRecord",
    "ModelSpec",
    "NodeConfig",
    "Runner",
    "ScaledClock",
    "Scheduler",
    "ServerBusy",
    "Stats",
    "default_catalogue",
    "default_fleet",
    "load_config",
]
