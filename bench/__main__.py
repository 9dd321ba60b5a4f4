"""``python -m bench NAME [--smoke] [--litellm] [--policies A,B] [--replicas N] [--repeats K]``:
run one benchmark, print it."""

from __future__ import annotations

import argparse
import importlib
import signal
import subprocess
import sys
import time
from typing import Any

from . import common

NAMES = (
    "proxy",
    "overhead",
    "streaming",
    "routing",
    "control",
    "saturation",
    "fairness",
    "autoscale",
    "faults",
)
#: Not part of ``all``: instruction counts under valgrind (minutes), py-spy profiles.
EXTRA = ("instructions", "profile")


def _run(
    name: str,
    smoke: bool,
    litellm: bool,
    quick: bool,
    baseline: str | None = None,
    policies: tuple[str, ...] = (),
    replicas: int = 1,
    repeats: int = 1,
    pythons: tuple[str, ...] = (),
    conversations: bool = False,
    tracing: bool = False,
) -> dict[str, Any]:
    if name == "routing" and conversations:
        name = "conversations"  # routing for the prompt cache: multi-turn conversations
    mod: Any = importlib.import_module(f"bench.{name}")
    cfg = mod.SMOKE if smoke else (getattr(mod, "QUICK", mod.Config()) if quick else mod.Config())
    if litellm and hasattr(cfg, "targets"):
        cfg.targets = (*cfg.targets, "litellm")
    if policies and hasattr(cfg, "policies"):
        cfg.policies = policies
    if baseline and hasattr(cfg, "baseline"):
        cfg.baseline = baseline
    if replicas > 1 and hasattr(cfg, "replicas"):
        cfg.replicas = replicas
    if repeats > 1 and hasattr(cfg, "repeats"):
        cfg.repeats = repeats
    if pythons and hasattr(cfg, "pythons"):
        cfg.pythons = pythons
    if tracing and hasattr(cfg, "tracing"):
        cfg.tracing = True
    t = time.monotonic()
    doc: dict[str, Any] = mod.run(cfg)
    doc["wall_seconds"] = time.monotonic() - t
    text = mod.render(doc)
    # A replicas run is its own result (and plot), not a replacement of the policies table;
    # faults always runs several replicas, so it has one table.
    several = name != "faults" and getattr(cfg, "replicas", 1) > 1
    stem = name + ("-replicas" if several else "")
    if name == "routing" and policies:
        stem = stem.replace("routing", "routing-bindings")  # its own table, not the policies'
    out = common.write_result(stem + ("-smoke" if smoke else ""), doc, text)
    print(f"\ncommand: {common.command_line()}\nmachine: {common.machine()}\n")
    print(text)
    print(f"\n({doc['wall_seconds']:.0f} s; raw results: {out})")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("name", choices=(*NAMES, *EXTRA, "all", "plots", "install-litellm"))
    p.add_argument("--smoke", action="store_true", help="seconds-long version (CI)")
    p.add_argument("--quick", action="store_true", help="shorter full run, where defined")
    p.add_argument("--litellm", action="store_true", help="add the LiteLLM peer (installs it)")
    p.add_argument(
        "--policies",
        default="",
        help="saturation, routing: binding policies to compare (early,late,reclaim); faults: "
        "shared_state_degrade policies (alone,remember,hold)",
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        help="proxy: also run the balancer of git REF (e.g. main), pinned like ours, same run",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="routing: 1 replica vs N sharing state (redis-server) vs N without, behind a "
        "round-robin nginx",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="K",
        help="routing, faults: run each set-up K times (interleaved) and compare medians",
    )
    p.add_argument(
        "--conversations",
        action="store_true",
        help="routing: multi-turn conversations sharing a growing prefix; stickiness and "
        "prefix-cache hits without affinity, with the opening's hash, with session headers",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="proxy: also measure the balancer with OpenTelemetry tracing on (100%% and 10%% "
        "sampled) exporting to an OTLP receiver",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="proxy, instructions, profile: run every pinned process at niceness N "
        "(e.g. -10 as root, against other work on a shared machine)",
    )
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PATH",
        help="proxy, instructions: also run the balancer on this interpreter (ollama-fleet "
        "installed in its environment); repeatable",
    )
    args = p.parse_args(argv)
    if args.replicas < 1 or args.repeats < 1:
        p.error("--replicas and --repeats must be at least 1")
    common.NICE = args.nice
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.name == "install-litellm" or args.litellm:
        install_litellm()
        if args.name == "install-litellm":
            return 0
    if args.name == "plots":
        from . import plots  # matplotlib: the `bench` extra

        plots.main()
        return 0
    for name in NAMES if args.name == "all" else (args.name,):
        policies = tuple(x.strip() for x in args.policies.split(",") if x.strip())
        _run(
            name,
            args.smoke,
            args.litellm,
            args.quick,
            args.baseline,
            policies,
            args.replicas,
            args.repeats,
            tuple(args.python),
            args.conversations,
            args.tracing,
        )
    return 0


def install_litellm() -> None:
    """``litellm[proxy]`` in its own venv under the cache dir (742 MB; never the project's)."""
    if common.litellm_binary() is not None:
        return
    venv = common.LITELLM_VENV
    print(f"installing litellm[proxy] into {venv} (about 2 minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"], check=True, timeout=900
    )


if __name__ == "__main__":
    sys.exit(main())
