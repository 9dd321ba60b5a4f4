"""Where the balancer's time goes: py-spy samples of it under load, summed per frame.

The balancer runs pinned (as in :mod:`bench.proxy`); wrk drives tiny POSTs at
concurrency 32, then :mod:`bench.loadgen` drives streams, while ``py-spy record
--nonblocking`` samples the balancer.  The table lists the frames with the largest
share of samples, by self time (the frame on top of the stack) and inclusive time
(anywhere on it).  Under uvloop, time spent inside the loop's C code (epoll, socket
reads and writes) shows as the Python frame that called into it (``Runner.run`` for the
loop itself, ``StreamWriter._writelines`` for a socket write).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common
from .fleets import stream_fleet, zero_fleet
from .proxy import BODY, STREAM_BODY


@dataclass
class Config:
    seconds: int = 15
    streams: int = 500
    tokens: int = 100
    top: int = 25
    baseline: str | None = None  # profile the balancer of this git ref instead


SMOKE = Config(seconds=2, streams=10, tokens=10, top=10)


def py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(common.PY).parent / "py-spy")
    if not Path(path).exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return path


def _short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    fn, path = m.groups()
    path = re.sub(r".*site-packages/", "", path)
    path = re.sub(r".*/(balancer|emulator|operator)/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return f"{fn} ({path})"


def summarise(raw: Path, top: int) -> dict[str, Any]:
    """Self and inclusive shares of samples per frame, from py-spy's ``--format raw``."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    boring = ("runpy", "__main__", "ollama_fleet/cli.py", "ollama_balancer/cli.py", "loop.py")
    return {
        "samples": total,
        "self": [(f, c / total) for f, c in own.most_common(top)] if total else [],
        "inclusive": [
            (f, c / total) for f, c in incl.most_common(top + 12) if not any(b in f for b in boring)
        ][:top]
        if total
        else [],
    }


def _record(pid: int, seconds: int, out: Path, after: float = 0.0) -> threading.Thread:
    """py-spy on ``pid`` for ``seconds``, starting ``after`` seconds from now (in a thread)."""
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
            "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip

    def sample() -> None:
        time.sleep(after)
        subprocess.run(argv, capture_output=True)

    t = threading.Thread(target=sample)
    t.start()
    return t


def run(cfg: Config) -> dict[str, Any]:
    cores = common.split_cores()
    out: dict[str, Any] = {"pinning": cores.describe(), "config": dict(cfg.__dict__)}
    for phase in ("tiny", "streams"):
        with common.workspace("profile") as (tmp, procs):
            fleet = zero_fleet(2) if phase == "tiny" else stream_fleet(2, cfg.streams, cfg.tokens)
            urls = common.start_emulator(procs, fleet, cpus=cores.load)
            source = common.checkout(cfg.baseline, tmp / "src") if cfg.baseline else None
            proc, base = common.start_balancer(procs, urls, cpus=cores.proxy, source=source)
            raw = tmp / "profile.raw"
            if phase == "tiny":
                script = common.wrk_script(tmp, BODY)
                common.run_wrk(base + "/api/chat", script, 32, 1, cores.load)  # warm-up
                sampler = _record(proc.pid, cfg.seconds, raw)
                common.run_wrk(base + "/api/chat", script, 32, cfg.seconds + 1, cores.load)
            else:
                duration = cfg.tokens / 20 * 4 + 30
                spec = {"mode": "stream", "url": base + "/api/chat", "body": STREAM_BODY,
                        "streams": cfg.streams, "ramp": 1.0, "duration": duration}  # fmt: skip
                # The streams open over the first second: sample the steady state after it.
                sampler = _record(proc.pid, max(1, int(cfg.tokens / 20) - 2), raw, after=1.5)
                common.run_loadgen(tmp, spec, duration + 30, cores.load)
            sampler.join(cfg.seconds + 60)
            out[phase] = summarise(raw, cfg.top) if raw.exists() else {"samples": 0}
            print(f"  {phase}: {out[phase]['samples']} samples", flush=True)
    return out


def render(doc: dict[str, Any]) -> str:
    parts = [f"Pinning: {doc['pinning']}."]
    for phase, title in (("tiny", "tiny POSTs, wrk -c32"), ("streams", "streams")):
        p = doc.get(phase) or {}
        if not p.get("samples"):
            parts.append(f"\n{title}: no samples")
            continue
        rows = [
            [f"{share * 100:.1f}%", name, f"{inc * 100:.1f}%", iname]
            for (name, share), (iname, inc) in zip(p["self"], p["inclusive"], strict=False)
        ]
        parts.append(
            f"\n{title} ({p['samples']} samples):\n\n"
            + common.table(["self", "frame", "inclusive", "frame "], rows)
        )
    return "\n".join(parts)
