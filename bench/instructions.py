"""Benchmark 5, instructions per request and per streamed chunk (valgrind callgrind).

CPU seconds move with whatever else the machine runs (other processes' cache traffic,
how many events one wake-up batches); instruction counts do not: the same code on the
same input executes the same instructions.  Each balancer variant runs under
``valgrind --tool=callgrind`` (about 50× slower, so the load is light), is warmed up,
then its counters are zeroed (``callgrind_control -z``) and dumped (``-d``) around a
measured phase: tiny POSTs from wrk, then streams from :mod:`bench.loadgen`.  Two
counts of the same variant agree within a fraction of a percent, so this is how one
change is measured against another (``--baseline REF``), and where the time goes
(``callgrind_annotate`` on the dumps kept in ``bench/out/callgrind/``).

Instructions are not seconds (a cache miss costs more than an add) and callgrind counts
user space only — the kernel's share of a proxy's work (sockets, epoll), most of nginx's,
is not in them — so the seconds-based :mod:`bench.proxy` stays the benchmark of record
for the targets and for ratios to nginx.  Per chunk, the count also depends on how many
lines one upstream read carries (a proxy slowed down by valgrind reads several at once),
so streams are few and slow: 8 at 20 tokens/s.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common
from .fleets import stream_fleet, zero_fleet
from .proxy import BODY, STREAM_BODY


@dataclass
class Config:
    seconds: int = 8  # measured wrk run (after a warm-up of the same length)
    connections: int = 8
    streams: int = 8
    tokens: int = 200  # 10 s per stream at 20 tokens/s: the request itself is ~1/200th
    baseline: str | None = None
    #: Variants of the current balancer: name -> environment.  Add
    #: ``("balancer+asyncio", (("OLLAMA_FLEET_LOOP", "asyncio"),))`` to weigh uvloop.
    variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (("balancer", ()),)
    pythons: tuple[str, ...] = ()  # other interpreters: "balancer@py3.12" each
    nginx: bool = True  # nginx (one process) counted the same way, for the ratio


SMOKE = Config(seconds=2, streams=4, tokens=10)


def valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed: `apt-get install valgrind`")
    return path


def _counted(pid: int, dumps: Path, action: Any) -> tuple[int, Any]:
    """Zero ``pid``'s counters, run ``action()``, dump: (instructions during it, its result)."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    result = action()
    before = set(dumps.glob(f"callgrind.{pid}.out.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(dumps.glob(f"callgrind.{pid}.out.*")) - before
        for path in new:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]), result
        time.sleep(0.2)
    raise RuntimeError(f"callgrind dump of {pid} not found in {dumps}")


def _measure(
    cfg: Config,
    procs: common.Procs,
    tmp: Path,
    urls: list[str],
    cores: common.Cores,
    name: str,
    source: Path | None,
    env: dict[str, str],
    streaming: bool,
    python: str = common.PY,
) -> dict[str, Any]:
    dumps = common.OUT / "callgrind"
    dumps.mkdir(parents=True, exist_ok=True)
    wrapper = [valgrind(), "--tool=callgrind", "--cache-sim=no",
               f"--callgrind-out-file={dumps}/callgrind.%p.out"]  # fmt: skip
    if name == "nginx":
        proc, base = common.start_nginx(
            procs, urls, cpus=cores.proxy, wrapper=wrapper, ready_timeout=120
        )
    else:
        proc, base = common.start_balancer(
            procs, urls, cpus=cores.proxy, name=name.replace("@", "-"), source=source,
            wrapper=wrapper, env=env, ready_timeout=240, python=python,
            # No background polling inside the count; the first poll stays trusted.
            extra=["--poll-interval", "3600", "--stale-after", "100000"],
        )  # fmt: skip
    url = base + "/api/chat"
    row: dict[str, Any] = {"target": name}
    if not streaming:
        script = common.wrk_script(tmp, BODY)
        common.run_wrk(url, script, cfg.connections, cfg.seconds, cores.load)  # warm-up
        ir, res = _counted(
            proc.pid,
            dumps,
            lambda: common.run_wrk(url, script, cfg.connections, cfg.seconds, cores.load),
        )
        n = res["requests"]
        row.update(
            requests=n,
            instructions_per_req=ir / n if n else float("nan"),
            errors=res["socket_errors"] + res["status_errors"] + res["timeouts"],
        )
    else:
        spec = {
            "mode": "stream",
            "url": url,
            "body": STREAM_BODY,
            "streams": cfg.streams,
            "ramp": 1.0,
            "duration": cfg.tokens / 20 * 20 + 60,
        }
        common.run_loadgen(tmp, spec, float(str(spec["duration"])) + 30, cores.load)  # warm-up
        ir, res = _counted(
            proc.pid,
            dumps,
            lambda: common.run_loadgen(tmp, spec, float(str(spec["duration"])) + 30, cores.load),
        )
        chunks = res["chunks"]
        row.update(
            streams=cfg.streams,
            chunks=chunks,
            instructions_per_chunk=ir / chunks if chunks else float("nan"),
            stream_errors=sum(res["errors"].values()),
        )
    proc.stop()
    return row


def run(cfg: Config) -> dict[str, Any]:
    cores = common.split_cores()
    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, Path | None, dict[str, str], str]] = [
        (name, None, dict(env), common.PY) for name, env in cfg.variants
    ]
    variants += [(f"balancer@py{common.python_version(py)}", None, {}, py) for py in cfg.pythons]
    if cfg.baseline:
        src = common.checkout(cfg.baseline, Path(tempfile.mkdtemp(prefix="bench-src-")))
        variants.append((f"balancer@{cfg.baseline}", src, {}, common.PY))
    if cfg.nginx and common.nginx_binary():
        variants.append(("nginx", None, {}, ""))
    for streaming in (False, True):
        with common.workspace("instructions") as (tmp, procs):
            fleet = stream_fleet(2, 64, cfg.tokens) if streaming else zero_fleet(2)
            urls = common.start_emulator(procs, fleet, cpus=cores.load)
            for name, source, env, python in variants:
                row = _measure(cfg, procs, tmp, urls, cores, name, source, env, streaming, python)
                key = "instructions_per_chunk" if streaming else "instructions_per_req"
                print(f"  {name:22s} {key} {row[key]:,.0f}", flush=True)
                rows.append(row)
    for _, source, _, _ in variants:
        if source is not None:
            shutil.rmtree(source, ignore_errors=True)
    return {"rows": rows, "config": cfg.__dict__, "pinning": cores.describe()}


def render(doc: dict[str, Any]) -> str:
    by_target: dict[str, dict[str, Any]] = {}
    for r in doc["rows"]:
        by_target.setdefault(r["target"], {}).update(r)
    rows = [
        [t, r.get("requests", 0), r.get("instructions_per_req", float("nan")) / 1e3,
         r.get("chunks", 0), r.get("instructions_per_chunk", float("nan")) / 1e3,
         r.get("errors", 0) + r.get("stream_errors", 0)]
        for t, r in by_target.items()
    ]  # fmt: skip
    nginx = by_target.get("nginx")
    for row, r in zip(rows, by_target.values(), strict=True):
        for key in ("instructions_per_req", "instructions_per_chunk"):
            ref = nginx.get(key) if nginx else None
            row.append(r.get(key, float("nan")) / ref if ref else float("nan"))
    return common.table(
        ["proxy", "requests", "k instructions/req", "chunks", "k instructions/chunk", "errors",
         "× nginx /req", "× nginx /chunk"],
        rows,
    )  # fmt: skip
