"""Several balancer processes on one port, acting as one (``workers``).

One Python process uses one core.  With ``workers: N`` the first process (the
*supervisor*) starts N balancer processes that all listen on the balancer's port
(SO_REUSEPORT: the kernel spreads connections between them) and route as one
balancer: they share slot leases, loads in progress, learned times, quotas and the
slot-freed signal through the shared state — ``shared_state`` when it is set, else a
private ``redis-server`` (or ``valkey-server``) the supervisor starts on loopback with
a random password, and stops by its PID.  Without either, it runs one worker and says
why (N workers that do not share would overfill pods, like unshared replicas).

The supervisor serves the operations port: ``/healthz`` and ``/readyz`` for the
whole pod, ``/metrics`` merged from every worker (each sample labelled ``worker``, so
``sum`` over them is the pod's), and ``/-/fleet`` and ``/-/dashboard`` from a worker
(fleet-wide: the state is shared).  It restarts a worker that dies, forwards SIGTERM
and waits for the workers to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .settings import BalancerSettings
from .telemetry import get_logger

__all__ = ["WORKER_ENV", "cpus_allowed", "detect_cpus", "supervise", "worker_overrides"]

#: Set by the supervisor for its workers: JSON of the settings a worker runs with instead.
WORKER_ENV = "OLLAMA_FLEET_WORKER"
#: Binaries that serve the private store, in order of preference.
STORE_BINARIES = ("valkey-server", "redis-server")
RESTART_DELAY = 1.0

log = get_logger("ollama_fleet.workers")


# ---------------------------------------------------------------- how many (pure)
def cpus_allowed(cpu_max: str | None, cfs: tuple[str, str] | None, affinity: int) -> int:
    """CPUs a container may use: its cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"),
    else cgroup v1's (quota, period) pair, rounded up, never more than the CPUs it may run on."""
    quota = period = None
    if cpu_max:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = parts
    elif cfs is not None and cfs[0].strip() not in ("-1", ""):
        quota, period = cfs
    try:
        if quota is not None and period is not None and float(period) > 0:
            return max(1, min(affinity, math.ceil(float(quota) / float(period))))
    except ValueError:
        pass
    return max(1, affinity)


def detect_cpus() -> int:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    v1 = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    cfs = (v1[0], v1[1]) if v1[0] is not None and v1[1] is not None else None
    return cpus_allowed(read("/sys/fs/cgroup/cpu.max"), cfs, len(os.sched_getaffinity(0)))


def worker_overrides(environ: Mapping[str, str]) -> dict[str, object] | None:
    """The settings this process runs with as a worker (None: it is not one)."""
    raw = environ.get(WORKER_ENV)
    if not raw:
        return None
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


# ---------------------------------------------------------------- the private store
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateStore:
    """A redis-server/valkey-server on loopback for the workers of one pod, no persistence."""

    binary: str
    workdir: Path
    port: int = 0
    password: str = ""
    proc: asyncio.subprocess.Process | None = None

    @classmethod
    def find(cls, workdir: Path) -> PrivateStore | None:
        for name in STORE_BINARIES:
            found = shutil.which(name)
            if found:
                return cls(found, workdir)
        return None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.port, self.password = _free_port(), secrets.token_hex(16)
        conf = self.workdir / "store.conf"  # the password stays out of the process list
        conf.write_text(
            f'port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\nsave ""\n'
            f"appendonly no\ndir {self.workdir}\n"
        )
        conf.chmod(0o600)
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            str(conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


# ---------------------------------------------------------------- merged metrics
class _Merged(Collector):
    """The workers' expositions as one, each sample labelled with its worker."""

    def __init__(self, texts: Sequence[tuple[int, str]]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker, text in self.texts:
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for s in family.samples:
                    labels = {**s.labels, "worker": str(worker)}
                    into.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        yield from merged.values()


def merge_expositions(texts: Sequence[tuple[int, str]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(texts))
    return generate_latest(registry)


# ---------------------------------------------------------------- the supervisor
@dataclass
class _Worker:
    index: int
    ops_port: int
    proc: asyncio.subprocess.Process | None = None


async def supervise(settings: BalancerSettings, count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers (``argv``: the balancer's own command line) until SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="ollama-fleet-workers-") as tmp:
        store = None
        url = settings.shared.url
        if not url:
            store = PrivateStore.find(Path(tmp))
            if store is None:
                log.warning(
                    "workers_unshared",
                    workers=count,
                    running=1,
                    reason="no shared_state and no redis-server/valkey-server to start: "
                    "workers that do not share would overfill pods",
                )
                count = 1
            else:
                await store.start()
                url = store.url
        try:
            return await _run(settings, count, argv, url)
        finally:
            if store is not None:
                await store.stop()


async def _run(settings: BalancerSettings, count: int, argv: Sequence[str], url: str) -> int:
    workers = [_Worker(i, _free_port()) for i in range(count)]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def start(w: _Worker) -> None:
        overrides = {
            "workers": 1,
            "reuse_port": True,
            "ops_port": w.ops_port,
            "ops_host": "127.0.0.1",
            "shared_state": url,
        }
        env = {**os.environ, WORKER_ENV: json.dumps(overrides)}
        w.proc = await asyncio.create_subprocess_exec(*argv, env=env)

    async def keep(w: _Worker) -> None:
        while not stopping.is_set():
            await start(w)
            assert w.proc is not None
            code = await w.proc.wait()
            if stopping.is_set():
                return
            log.warning("worker_exited", worker=w.index, code=code, restart_in=RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)

    keepers = [asyncio.create_task(keep(w)) for w in workers]
    ops_runner = await _serve_ops(settings, workers, stopping) if settings.listen.ops_port else None
    print(
        f"ollama-fleet balancer: {count} workers on http://{settings.listen.host}:{settings.listen.port}",
        flush=True,
    )
    await stopping.wait()
    for w in workers:
        if w.proc is not None and w.proc.returncode is None:
            w.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.process.drain_delay + settings.process.drain_grace + 5):
            await asyncio.gather(*keepers, return_exceptions=True)
    for w in workers:
        if w.proc is not None and w.proc.returncode is None:
            w.proc.kill()
    for task in keepers:
        task.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    if ops_runner is not None:
        await ops_runner.cleanup()
    return 0


async def _serve_ops(
    settings: BalancerSettings, workers: Sequence[_Worker], stopping: asyncio.Event
) -> web.AppRunner:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def fetch(w: _Worker, path: str) -> tuple[int, bytes, str]:
        try:
            async with session.get(f"http://127.0.0.1:{w.ops_port}{path}") as resp:
                return resp.status, await resp.read(), resp.content_type
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, b"", ""

    async def healthz(request: web.Request) -> web.StreamResponse:
        alive = [w.index for w in workers if w.proc is not None and w.proc.returncode is None]
        ok = len(alive) == len(workers)
        return web.json_response({"status": "ok" if ok else "degraded", "workers": alive})

    async def readyz(request: web.Request) -> web.StreamResponse:
        answers = await asyncio.gather(*(fetch(w, "/readyz") for w in workers))
        ready = [w.index for w, a in zip(workers, answers, strict=True) if a[0] == 200]
        ok = bool(ready) and not stopping.is_set()
        body = {"ready": ok, "workers_ready": ready, "draining": stopping.is_set()}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        answers = await asyncio.gather(*(fetch(w, "/metrics") for w in workers))
        texts = [(w.index, a[1].decode()) for w, a in zip(workers, answers, strict=True) if a[0]]
        return web.Response(
            body=merge_expositions(texts), content_type="text/plain", charset="utf-8"
        )

    async def from_a_worker(request: web.Request) -> web.StreamResponse:
        for w in workers:
            status, body, ctype = await fetch(w, request.path)
            if status:
                return web.Response(status=status, body=body, content_type=ctype or None)
        return web.json_response({"error": "no worker answers"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/fleet", from_a_worker)
    app.router.add_get("/-/dashboard", from_a_worker)

    async def close_session(_app: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close_session)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, settings.listen.host, settings.listen.ops_port, reuse_address=True
    ).start()
    return runner


def command_line() -> list[str]:
    """This process's own command, to start its workers with."""
    return [sys.executable, *sys.orig_argv[1:]] if sys.orig_argv else [sys.executable, *sys.argv]
