"""``ollama-fleet demo``: an emulated Ollama fleet with the balancer in front, on loopback."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Mapping

from ollama_balancer.app import create_app, serve
from ollama_balancer.settings import BalancerSettings
from ollama_wire.loop import run as run_loop

__all__ = ["configure", "run"]


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
        help="emulated time factor (0.1: a 20 s cold load takes 2 s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop by itself after this many seconds (0 = until Ctrl-C)",
    )


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ollama_balancer.telemetry import configure_logging

    configure_logging("console", "warning")
    return run_loop(_main(args), environ)


def _demo_fleet(args: argparse.Namespace) -> object:
    from ollama_emulator import FleetConfig, NodeConfig, default_catalogue

    catalogue = default_catalogue()
    names = [m.name for m in catalogue.models] if hasattr(catalogue, "models") else []
    chat = [n for n in names if "embed" not in n][:4] or ["llama3.2:3b"]
    embed = [n for n in names if "embed" in n][:1]
    base = args.node_base_ip.rsplit(".", 1)
    nodes = []
    for i in range(args.nodes):
        # Every node has every demo model on disk; each keeps a different one warm,
        # so the balancer's residency routing is visible in X-Ollama-Backend.
        nodes.append(
            NodeConfig(
                name=f"ollama-{i}",
                host=f"{base[0]}.{int(base[1]) + i}",
                port=args.node_port,
                installed=chat + embed,
                loaded=[chat[i % len(chat)]],
            )
        )
    return FleetConfig(nodes=nodes, catalogue=catalogue, time_scale=args.time_scale)


async def _main(args: argparse.Namespace) -> int:
    from ollama_emulator import EmulatedFleet

    config = _demo_fleet(args)
    async with EmulatedFleet(config) as fleet:  # type: ignore[arg-type]
        settings = BalancerSettings(
            host=args.host,
            port=args.port,
            backends=tuple(f"{n.name}={n.url}" for n in fleet.nodes),
            poll_interval=1.0,
        )
        app = create_app(settings)
        runner, port = await serve(app, args.host, args.port, shutdown_timeout=5)
        url = f"http://{args.host}:{port}"
        model = config.nodes[0].loaded[0]  # type: ignore[attr-defined]
        print(f"Emulated Ollama fleet: {', '.join(f'{n.name} {n.url}' for n in fleet.nodes)}")
        print(f"ollama-fleet balancer:  {url}   (Ctrl-C to stop)\n")
        print("Try it:")
        print(f"  curl -s {url}/api/tags")
        print(
            f'  curl -si {url}/api/chat -d \'{{"model": "{model}", "messages": '
            f'[{{"role": "user", "content": "hello"}}], "stream": false}}\''
        )
        print(f'  OLLAMA_HOST={url} python -c "import ollama; print(ollama.ps())"', flush=True)
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
