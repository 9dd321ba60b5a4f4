"""``ollama-fleet demo``: an emulated Ollama fleet with the balancer in front, on loopback.

The fleet is laid out to show what the balancer does when a front end (Open WebUI,
``ollama``, the OpenAI or Anthropic SDKs) is pointed at it: the same model warm on
two pods (requests spread over both), models only on disk (a cold load, routed to
the pod with room), one model big enough that its cold load takes a while, and an
embedding model for RAG.  Admin requests fan out, so pulling or deleting a model
from the front end reaches every pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from ollama_balancer.app import create_app, serve
from ollama_balancer.settings import AdminMode, BalancerSettings
from ollama_emulator import EmulatedFleet, FleetConfig, NodeConfig, default_catalogue
from ollama_wire.loop import run as run_loop

__all__ = ["BIG_MODEL", "EMBEDDING_MODEL", "SHARED_MODEL", "configure", "demo_fleet", "run"]

GIB = 2**30
SHARED_MODEL = "llama3.2:3b"
"""Warm on two pods: consecutive chats land on either."""
BIG_MODEL = "llama3.3:70b"
"""42 GB on disk on the big pod only: a 60 s (emulated) cold load."""
EMBEDDING_MODEL = "nomic-embed-text:latest"


@dataclass(frozen=True)
class _Pod:
    vram: int
    installed: tuple[str, ...]
    loaded: tuple[str, ...]
    num_parallel: int = 2


#: The pods' layout; more nodes than pods repeat it.
_PODS = (
    _Pod(
        24 * GIB,
        (SHARED_MODEL, "mistral:7b", "deepseek-r1:7b", EMBEDDING_MODEL),
        (SHARED_MODEL, EMBEDDING_MODEL),
    ),
    _Pod(24 * GIB, (SHARED_MODEL, "qwen3:8b"), (SHARED_MODEL, "qwen3:8b")),
    _Pod(
        80 * GIB,
        (BIG_MODEL, "phi3:mini", "gemma2:2b", EMBEDDING_MODEL),
        ("phi3:mini",),
        num_parallel=1,  # one big slot: the 70b and its KV cache fit beside phi3
    ),
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="emulated Ollama nodes")
    parser.add_argument("--host", default="127.0.0.1", help="balancer address")
    parser.add_argument("--port", type=int, default=11434, help="balancer port (0 = any free)")
    parser.add_argument(
        "--node-base-ip",
        default="127.0.0.2",
        help="first emulated node's address; the others count up (127.0.0.3, ...)",
    )
    parser.add_argument(
        "--node-port", type=int, default=0, help="port of every emulated node (0 = any free port)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="emulated time factor (0.1: the 60 s cold load of llama3.3:70b takes 6 s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop by itself after this many seconds (0 = until Ctrl-C)",
    )


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ollama_wire.logs import configure_logging

    configure_logging("console", "warning")
    return run_loop(_main(args), environ)


def demo_fleet(
    nodes: int = 3, *, base_ip: str = "127.0.0.2", port: int = 0, time_scale: float = 0.1
) -> FleetConfig:
    """The demo's fleet: ``nodes`` emulated pods laid out as :data:`_PODS`."""
    prefix, last = base_ip.rsplit(".", 1)
    configs = []
    for i in range(nodes):
        pod = _PODS[i % len(_PODS)]
        configs.append(
            NodeConfig(
                name=f"ollama-{i}",
                host=f"{prefix}.{int(last) + i}",
                port=port,
                vram_bytes=pod.vram,
                num_parallel=pod.num_parallel,
                # OLLAMA_CONTEXT_LENGTH: 32k everywhere, so every copy runs alike.
                context_length=32768,
                installed=pod.installed,
                loaded=pod.loaded,
            )
        )
    return FleetConfig(nodes=configs, catalogue=default_catalogue(), time_scale=time_scale)


def _describe(fleet: EmulatedFleet) -> list[str]:
    lines = []
    for node in fleet.nodes:
        warm = [r.name for r in node.scheduler.runners.values()]
        disk = [m.display for m in node.library.models() if m.display not in warm]
        lines.append(
            f"  {node.name:9} {node.url:26} warm: {', '.join(warm) or '-'}; "
            f"on disk: {', '.join(disk) or '-'}"
        )
    return lines


HELLO = [{"role": "user", "content": "hello"}]


def _chat(url: str, model: str, note: str) -> str:
    body = json.dumps({"model": model, "messages": HELLO, "stream": False})
    return f"  curl -si {url}/api/chat -d '{body}'   # {note}"


async def _main(args: argparse.Namespace) -> int:
    config = demo_fleet(
        args.nodes, base_ip=args.node_base_ip, port=args.node_port, time_scale=args.time_scale
    )
    async with EmulatedFleet(config) as fleet:
        settings = BalancerSettings.build(
            host=args.host,
            port=args.port,
            backends=tuple(f"{n.name}={n.url}" for n in fleet.nodes),
            poll_interval=1.0,
            admin=AdminMode.FANOUT,  # a sandbox: pulls and deletes from a front end reach every pod
        )
        app = create_app(settings)
        runner, port = await serve(app, args.host, args.port, shutdown_timeout=5)
        url = f"http://{args.host}:{port}"
        messages = json.dumps({"model": "qwen3:8b", "max_tokens": 200, "messages": HELLO})
        embed = json.dumps({"model": EMBEDDING_MODEL, "input": "hello"})
        out = [
            f"Emulated Ollama fleet (time x{args.time_scale:g}):",
            *_describe(fleet),
            "",
            f"ollama-fleet balancer:  {url}   (Ctrl-C to stop)",
            f"Dashboard:              {url}/-/dashboard",
            "",
            "Point a client at it:",
            f"  Open WebUI:     OLLAMA_BASE_URL={url} open-webui serve"
            "   (or Admin Settings > Connections > Ollama API)",
            f"  Ollama CLI:     OLLAMA_HOST={url} ollama ps",
            f'  ollama-python:  ollama.Client(host="{url}")',
            f'  OpenAI SDK:     openai.OpenAI(base_url="{url}/v1", api_key="ollama")',
            f'  Anthropic SDK:  anthropic.Anthropic(base_url="{url}", api_key="ollama")'
            f"   (Claude Code: ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN=ollama)",
            "",
            "Try it:",
            f"  curl -s {url}/api/tags",
            f"  curl -s {url}/api/ps",
            _chat(url, SHARED_MODEL, "warm on two pods: see X-Ollama-Backend"),
            _chat(url, "mistral:7b", "on disk only: a cold load"),
            _chat(url, BIG_MODEL, "42 GB: a long cold load (X-Route-Reason: cold-load)"),
            f"  curl -s {url}/api/embed -d '{embed}'",
            f"  curl -s {url}/v1/messages -H 'anthropic-version: 2023-06-01' -d '{messages}'",
        ]
        print("\n".join(out), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            if args.duration > 0:
                await asyncio.wait_for(stop.wait(), timeout=args.duration)
            else:
                await stop.wait()
        except TimeoutError:
            pass
        await runner.cleanup()
    return 0
