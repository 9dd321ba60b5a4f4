"""Process plumbing shared by every benchmark: ports, subprocesses, /proc accounting, tables.

Every process a benchmark starts is a :class:`Proc` and is stopped by its own PID
(SIGTERM, then SIGKILL after a grace period).  Everything listens on loopback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- CPU pinning
@dataclass(frozen=True)
class Cores:
    """Which CPUs the proxy under test gets, and which everything else (emulator, load) gets.

    With two or more CPUs the proxy is alone on the last one; with one there is no
    isolation (``proxy`` and ``load`` are both None and nothing is pinned).
    """

    proxy: str | None
    load: str | None

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned (one CPU)"
        return f"proxy on CPU {self.proxy}; emulator and load generator on CPU {self.load}"


def split_cores() -> Cores:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return Cores(None, None)
    return Cores(str(cpus[-1]), ",".join(str(c) for c in cpus[:-1]))


#: ``--nice N``: a niceness for every pinned process (the proxies, the emulator, the load
#: generators).  On a machine shared with other work, a negative one (root only) keeps the
#: others from taking the measured CPUs; 0 (the default) leaves the scheduler alone.
NICE = 0


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (taskset and nice exec it: the PID is the program's)."""
    out = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
    return ["nice", "-n", str(NICE), *out] if NICE and cpus else out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ----------------------------------------------------------------- /proc accounting
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in task.read_text().split()]
    return out


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime+stime of ``pid`` (and of its live children, for nginx's workers)."""
    pids = [pid, *(_children(pid) if with_children else [])]
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def peak_rss_mib(pid: int, with_children: bool = False) -> float:
    """VmHWM (peak resident set) in MiB, summed over ``pid`` and its live children."""
    pids = [pid, *(_children(pid) if with_children else [])]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


# ----------------------------------------------------------------- processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    children: bool = False  # count children's CPU (nginx workers)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid, self.children)

    def rss(self) -> float:
        return peak_rss_mib(self.pid, self.children)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)  # nginx: fast shutdown of master + workers
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            for child in _children(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


class Procs:
    """Starts processes and stops every one it started, by PID, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        children: bool = False,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                pinned(argv, cpus),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
            )
        proc = Proc(name, popen, log, children)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


@contextlib.contextmanager
def workspace(name: str) -> Iterator[tuple[Path, Procs]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    procs = Procs(tmp)
    try:
        yield tmp, procs
    finally:
        procs.stop_all()
        if os.environ.get("BENCH_KEEP"):
            print(f"{name}: logs kept in {tmp} (BENCH_KEEP)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def wait_until(pred: Any, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(0.05)
    tail = proc.tail() if proc else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, doc: dict[str, Any], timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, json.dumps(doc).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ----------------------------------------------------------------- components
def start_emulator(
    procs: Procs, config: dict[str, Any], name: str = "emulator", cpus: str | None = None
) -> list[str]:
    """An ``ollama-fleet emulate`` process for ``config``; returns the node URLs in order."""
    path = procs.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.start(
        name, [PY, "-m", "ollama_fleet", "emulate", "--config", str(path)], cpus=cpus
    )
    count = len(config["nodes"])

    names = {str(n["name"]) for n in config["nodes"]}

    def urls() -> list[str]:
        # "NAME<TAB>URL<TAB>..." per node (then a "registry" line: not a node)
        lines = [ln.split("\t") for ln in proc.log.read_text().splitlines() if "\thttp" in ln]
        return [parts[1] for parts in lines if parts[0] in names]

    wait_until(lambda: len(urls()) >= count, 60, f"{count} emulated nodes", proc)
    proc.extra["urls"] = urls()
    return urls()


def start_balancer(
    procs: Procs,
    urls: Sequence[str],
    *,
    policy: str = "residency",
    extra: Sequence[str] = (),
    backend_opts: str = "",
    cpus: str | None = None,
    name: str = "balancer",
    source: Path | None = None,
    log_level: str | None = None,
    wrapper: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
    python: str = PY,
) -> tuple[Proc, str]:
    """``backend_opts`` (e.g. ``;slots=4;vram=16GiB``) tells the balancer what each node is,
    as an operator would (the chart passes OLLAMA_NUM_PARALLEL and the VRAM annotation).
    ``source``: a checkout (see :func:`checkout`) whose balancer runs instead of this one."""
    port = free_port()
    backends = ",".join(f"node-{i}={u}{backend_opts}" for i, u in enumerate(urls))
    argv = [
        *wrapper, python, "-m", "ollama_fleet", "balancer", "--host", "127.0.0.1",
        "--port", str(port), "--backends", backends, "--routing-policy", policy,
        "--log-level", log_level or os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "--log-format", "json", *extra,
    ]  # fmt: skip
    env = dict(env or {})
    if source is not None:
        roots = [str(source / d) for d in ("balancer", "emulator", "operator")]
        env["PYTHONPATH"] = os.pathsep.join(roots)
    proc = procs.start(name, argv, cpus=cpus, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(url + "/readyz")[0] == 200, ready_timeout, "balancer /readyz", proc)
    return proc, url


NGINX_CONF = """\
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fleet {{
        {balance}
{servers}
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 128m;
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Ollama answers 403 to a Host it does not know (DNS-rebinding guard): the
            # upstream block name "fleet" is not one, so say localhost like a client would.
            proxy_set_header Host localhost;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            {extra}
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(
    procs: Procs,
    urls: Sequence[str],
    workers: int = 1,
    cpus: str | None = None,
    wrapper: Sequence[str] = (),
    ready_timeout: float = 20,
    *,
    balance: str = "least_conn",
    name: str = "nginx",
    tell_upstream: bool = False,
) -> tuple[Proc, str]:
    """nginx in front of ``urls``: ``balance`` is ``least_conn`` or ``round_robin``.  With a
    ``wrapper`` (valgrind) it runs as one process (``master_process off``), so that the
    wrapped process is the one serving.  ``tell_upstream`` adds ``X-Upstream`` (the address
    that answered) to every answer, so a client can tell which balancer replica served it."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(
            "nginx is not installed: `apt-get install nginx` (Debian's nginx 1.22; .ci/tools.sh "
            "installs it)"
        )
    port = free_port()
    d = procs.workdir / name
    d.mkdir(exist_ok=True)
    servers = "\n".join(f"        server {u.split('://', 1)[1]};" for u in urls)
    conf = NGINX_CONF.format(
        workers=workers,
        dir=d,
        port=port,
        servers=servers,
        user="user root;" if os.geteuid() == 0 else "",
        balance="least_conn;" if balance == "least_conn" else "# round-robin (nginx's default)",
        extra="add_header X-Upstream $upstream_addr always;" if tell_upstream else "",
    )
    (d / "nginx.conf").write_text(conf)
    directives = "daemon off;" + (" master_process off;" if wrapper else "")
    proc = procs.start(
        name, [*wrapper, binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", directives],
        children=True, cpus=cpus,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: http_get(url + "/")[0] == 200, ready_timeout, "nginx", proc
    )  # "/" needs no key
    return proc, url


def start_redis(
    procs: Procs, cpus: str | None = None, name: str = "redis", port: int | None = None
) -> tuple[Proc, str]:
    """A real ``redis-server`` (Debian; .ci/tools.sh installs it) on loopback, no persistence,
    stopped by its PID with everything else the benchmark started.  Returns its URL.  Given
    the ``port`` of one that died, it is that store back, empty (a restart without
    persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: `apt-get install redis-server` (.ci/tools.sh "
            "installs it)"
        )
    port = port or free_port()
    d = procs.workdir / name
    d.mkdir(exist_ok=True)
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(d),
    ]  # fmt: skip
    proc = procs.start(name, argv, cpus=cpus)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_until(pong, 20, "redis-server", proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def shared_status(url: str) -> dict[str, Any]:
    """The ``shared_state`` block of a balancer's ``/-/fleet``."""
    doc: dict[str, Any] = json.loads(http_get(url + "/-/fleet")[1])
    status: dict[str, Any] = doc["shared_state"]
    return status


def wait_shared(urls: Sequence[str], timeout: float = 30.0) -> None:
    """Until every balancer at ``urls`` says its shared state is up (mode ``shared``)."""
    wait_until(
        lambda: all(shared_status(u).get("mode") == "shared" for u in urls),
        timeout,
        f"shared state up on {len(urls)} balancer(s)",
    )


@dataclass
class Replicas:
    """N balancer processes behind a round-robin nginx front (and the redis-server they share)."""

    balancers: list[Proc]
    urls: list[str]
    front: Proc
    url: str  # the front's
    store: Proc | None = None
    ops: list[str] = field(default_factory=list)  # each replica's operations port, if asked

    def metric(self, name: str, **labels: str) -> float:
        """``name`` summed over the replicas' ``/metrics`` (needs ``ops``)."""
        return sum(metric_sum(u, name, **labels) for u in self.ops)

    def cpu(self) -> float:
        """Balancers' CPU seconds (the front and the store are reported apart)."""
        return sum(p.cpu() for p in self.balancers)

    def fallbacks(self) -> int:
        """Times any replica fell back to local state (0 without a store)."""
        if self.store is None:
            return 0
        return sum(int(shared_status(u).get("fallbacks", 0)) for u in self.urls)


def start_replicas(
    procs: Procs,
    urls: Sequence[str],
    replicas: int,
    *,
    shared: bool,
    extra: Sequence[str] = (),
    backend_opts: str = "",
    policy: str = "residency",
    cpus: str | None = None,
    store_cpus: str | None = None,
    ops: bool = False,
) -> Replicas:
    """``replicas`` balancers in front of ``urls``, sharing a fresh redis-server when ``shared``,
    behind nginx round-robin (what a Kubernetes Service does with several balancer pods).
    ``ops``: each replica also serves ``/metrics`` on an operations port of its own."""
    store: Proc | None = None
    flags = list(extra)
    if shared:
        store, store_url = start_redis(procs, cpus=store_cpus)
        flags += ["--shared-state", store_url]
    balancers: list[Proc] = []
    bal_urls: list[str] = []
    ops_urls: list[str] = []
    for i in range(replicas):
        own: list[str] = []
        if ops:
            port = free_port()
            own = ["--ops-port", str(port)]
            ops_urls.append(f"http://127.0.0.1:{port}")
        proc, url = start_balancer(
            procs, urls, policy=policy, extra=[*flags, *own], backend_opts=backend_opts,
            cpus=cpus, name=f"balancer-{i}",
        )  # fmt: skip
        balancers.append(proc)
        bal_urls.append(url)
    if shared:
        wait_shared(bal_urls)
    front, url = start_nginx(procs, bal_urls, balance="round_robin", name="front")
    return Replicas(balancers, bal_urls, front, url, store, ops_urls)


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The samples of metric ``name`` (a counter's ``_total`` included) at ``url/metrics``
    whose labels include ``labels``, summed; 0 when there are none."""
    text = http_get(url + "/metrics")[1].decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series = head.split("{", 1)[0]
        if series != name or not all(w in head for w in want):
            continue
        total += float(value)
    return total


LITELLM_VENV = (
    Path(os.environ.get("OLLAMA_FLEET_CACHE", Path.home() / ".cache" / "ollama-fleet"))
    / "litellm-venv"
)


def litellm_binary() -> Path | None:
    path = LITELLM_VENV / "bin" / "litellm"
    return path if path.exists() else None


def start_litellm(
    procs: Procs, urls: Sequence[str], models: Sequence[str] | str
) -> tuple[Proc, str]:
    """LiteLLM proxy, least-busy, one deployment per (node, model), OpenAI API (``openai/``)."""
    binary = litellm_binary()
    if binary is None:
        raise RuntimeError(
            f"LiteLLM is not installed: run `python -m bench install-litellm` ({LITELLM_VENV})"
        )
    port = free_port()
    names = [models] if isinstance(models, str) else list(models)
    deployments = [
        {
            "model_name": model,
            "litellm_params": {"model": f"openai/{model}", "api_base": u + "/v1", "api_key": "x"},
        }
        for model in names
        for u in urls
    ]
    cfg = {
        "model_list": deployments,
        "router_settings": {"routing_strategy": "least-busy", "num_retries": 0},
        "litellm_settings": {"request_timeout": 600, "telemetry": False},
    }
    path = procs.workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = procs.start(
        "litellm",
        [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        env={"LITELLM_MASTER_KEY": "sk-bench", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
             "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(url + "/health/liveliness")[0] == 200, 120, "litellm", proc)
    return proc, url


# ----------------------------------------------------------------- load generator
def run_loadgen(
    workdir: Path, spec: dict[str, Any], timeout: float, cpus: str | None = None
) -> dict[str, Any]:
    """Run :mod:`bench.loadgen` in its own process (its CPU is not the proxy's) and read back."""
    spec_path = workdir / "loadgen-spec.json"
    out_path = workdir / "loadgen-out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    subprocess.run(
        pinned([PY, "-m", "bench.loadgen", str(spec_path), str(out_path)], cpus),
        check=True,
        timeout=timeout,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def checkout(ref: str, into: Path) -> Path:
    """The source tree of git ``ref`` (e.g. ``main``) under ``into``, to run it side by side."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "balancer", "emulator", "operator"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def python_version(python: str) -> str:
    """``3.12.1`` for the interpreter at ``python`` (which must have ollama-fleet installed)."""
    out = subprocess.run(
        [python, "-c", "import platform, ollama_fleet; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


# ----------------------------------------------------------------- wrk
#: wrk's Lua hooks: a fixed POST body, and a machine-readable summary line at the end
#: (latency percentiles in microseconds, as wrk keeps them).
WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK {{\\"requests\\":%d,\\"duration_us\\":%d,\\"socket_errors\\":%d,"
    .. "\\"status_errors\\":%d,\\"timeouts\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,"
    .. "\\"p99_us\\":%d,\\"max_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_script(workdir: Path, body: dict[str, Any]) -> Path:
    """A Lua script for wrk that POSTs ``body`` as JSON."""
    path = workdir / "post.lua"
    text = json.dumps(json.dumps(body, separators=(",", ":")))  # a Lua string literal too
    path.write_text(WRK_LUA.format(body=text))
    return path


def wrk_command(url: str, script: Path, connections: int, seconds: int) -> list[str]:
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError(
            "wrk is not installed: `apt-get install wrk` (Debian's wrk 4.1; .ci/tools.sh "
            "installs it)"
        )
    return [
        binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip


def run_wrk(
    url: str, script: Path, connections: int, seconds: int, cpus: str | None = None
) -> dict[str, Any]:
    """One wrk run (one thread, ``connections`` connections); its summary line, parsed."""
    argv = pinned(wrk_command(url, script, connections, seconds), cpus)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK "):
            result: dict[str, Any] = json.loads(line[4:])
            return result
    raise RuntimeError(
        f"wrk printed no summary (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )


# ----------------------------------------------------------------- stats and output
def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "—"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def command_line() -> str:
    return "python -m bench " + " ".join(sys.argv[1:])


def write_result(name: str, doc: dict[str, Any], text: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"command": command_line(), "machine": machine(), **doc}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    (OUT / f"{name}.md").write_text(
        f"command: `{doc['command']}`\n\nmachine: {doc['machine']}\n\n{text}\n"
    )
    return path
