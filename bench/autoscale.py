"""Benchmark 7, a day in fifteen minutes: placement follows demand (issue #15).

Fleet: ``pods`` emulated Ollama pods (``slots`` each, 24 GiB), API objects on a real
kube-apiserver, the ModelPool operator and the balancer (late binding, ``--queue``) as their
own processes, everything on loopback.  Three models are on every pod's disk; ``peak`` (8 GB,
``load_seconds`` to load) has traffic that rises from night to a noon peak and falls again
over ``day_seconds`` (a day in fifteen emulated minutes, a business day between ``night``
and ``noon``: :meth:`Config.peak_rate`), ``steady-a`` and ``steady-b`` (4 GB)
have constant traffic.  Arrivals are a seeded open-loop Poisson trace (the same in every
mode), OpenAI streaming API through the balancer.

Modes, for ``peak`` (the steady models keep ``replicas: 1`` throughout):

* ``fixed-1``: ``replicas: 1``; beyond it the balancer cold-loads copies on demand;
* ``fixed-4``: ``replicas: 4``, warm all day;
* ``auto``: ``minReplicas: 1, maxReplicas: 4, targetRequests: target``, the operator
  following the balancer's demand (window ``window``, delay ``delay``).

Measured: TTFT (first content chunk) p50/p99 of ``peak`` and of all requests; cold loads (the
balancer's ``ollama_fleet_cold_loads_total``); and the warm copies held, sampled from every
pod's ``/api/ps``: copy-seconds of ``peak`` (a copy resident for a second = one
GPU-second of a copy) and GiB-seconds of all models.  Times are emulated seconds (real /
time_scale); the operator's delay, window and poll interval are scaled the same way.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import common

MODES = ("fixed-1", "fixed-4", "auto")
PEAK, STEADY = "peak", ("steady-a", "steady-b")
GIB = 2**30
CRD = common.ROOT / "manifests" / "crds" / "modelpools.ollamafleet.io.yaml"


@dataclass
class Config:
    pods: int = 8
    slots: int = 2
    time_scale: float = 0.1
    day_seconds: float = 900.0  # emulated: the day, compressed
    night: float = 0.3  # peak's offered load at night, in warm copies' worth of slots
    noon: float = 3.3  # ... and at noon
    steady: float = 0.4  # each steady model's offered load, in copies
    tokens: tuple[int, int] = (40, 120)
    prompt_tokens: tuple[int, int] = (50, 400)
    tokens_per_second: float = 40.0
    prompt_tokens_per_second: float = 2000.0
    load_seconds: float = 20.0  # emulated seconds to load peak (steady: half)
    max_replicas: int = 4
    target: float = 1.2  # auto: in flight + queued per copy (of `slots`: 60% busy)
    # The compressed day's clock: a 15-minute day makes a real hour 37.5 s.  Delay and window
    # are set in that light (48 and 24 minutes of the day); the models' load times are not
    # compressed.
    delay: float = 30.0  # auto: scaleDownDelaySeconds, emulated
    window: float = 15.0  # operator: demand averaged over this many emulated seconds
    interval: float = 2.5  # operator: demand polled this often (emulated)
    keep_alive: float = 60.0  # Ollama's OLLAMA_KEEP_ALIVE for copies clients load
    resync: float = 60.0  # operator: resync (emulated)
    timeout: float = 600.0  # emulated seconds a client waits
    sample_every: float = 5.0  # emulated seconds between two /api/ps samples
    seed: int = 7
    modes: tuple[str, ...] = MODES
    #: extra settle time after the trace, emulated (the autoscaler's scale-down shows)
    tail: float = 0.0

    def mean_service(self) -> float:
        decode = sum(self.tokens) / 2 / self.tokens_per_second
        prefill = sum(self.prompt_tokens) / 2 / self.prompt_tokens_per_second
        return decode + prefill

    def copy_rate(self) -> float:
        """Requests per emulated second one warm copy completes with every slot busy."""
        return self.slots / self.mean_service()

    def peak_rate(self, t: float) -> float:
        """Offered requests/s of ``peak`` at emulated time ``t``: a business day (hours of
        the compressed day): quiet until 07:00, rising until 10:00, busy until 16:00, falling
        until 20:00, quiet again (smooth steps between)."""
        hour = 24 * t / self.day_seconds
        shape = _smooth((hour - 7) / 3) if hour < 16 else 1 - _smooth((hour - 16) / 4)
        return self.copy_rate() * (self.night + (self.noon - self.night) * shape)


def _smooth(x: float) -> float:
    """0 below 0, 1 above 1, smoothstep between."""
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


SMOKE = Config(
    pods=4,
    time_scale=0.05,
    day_seconds=240.0,
    load_seconds=10.0,
    delay=15.0,
    window=8.0,
    interval=2.0,
    keep_alive=30.0,
    resync=20.0,
    timeout=200.0,
    sample_every=4.0,
)


def fleet(cfg: Config) -> dict[str, Any]:
    def spec(name: str, size: str, load: float) -> dict[str, Any]:
        return {
            "name": f"{name}:latest",
            "size_bytes": size,
            "load_seconds": load,
            "tokens_per_second": cfg.tokens_per_second,
            "prompt_tokens_per_second": cfg.prompt_tokens_per_second,
            "response_tokens": 100_000,  # answers end at max_tokens
        }

    return {
        "time_scale": cfg.time_scale,
        "catalogue": [
            spec(PEAK, "8GB", cfg.load_seconds),
            *(spec(s, "4GB", cfg.load_seconds / 2) for s in STEADY),
        ],
        "nodes": [
            {"name": f"node-{i}", "host": "127.0.0.1", "port": 0, "vram": "24GiB",
             "num_parallel": cfg.slots, "max_queue": 4096, "context_length": 4096,
             "keep_alive": cfg.keep_alive,
             "installed": [PEAK, *STEADY]}
            for i in range(cfg.pods)
        ],
    }  # fmt: skip


def make_trace(cfg: Config) -> list[dict[str, Any]]:
    """Seeded arrivals (emulated seconds): peak's day curve (thinning a Poisson process at
    its noon rate) and the steady models' constant rates."""
    rng = random.Random(cfg.seed)
    out: list[dict[str, Any]] = []
    top = cfg.peak_rate(cfg.day_seconds / 2)
    streams = [(PEAK, top), *((s, cfg.steady * cfg.copy_rate()) for s in STEADY)]
    for model, rate in streams:
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t >= cfg.day_seconds:
                break
            if model == PEAK and rng.random() > cfg.peak_rate(t) / top:
                continue
            prompt_tokens = rng.randint(*cfg.prompt_tokens)
            prompt = (f"{model} at {t:.1f}: " + "lorem ipsum " * prompt_tokens)[: 4 * prompt_tokens]
            out.append(
                {
                    "at": t,
                    "model": model,
                    "prompt": prompt,
                    "max_tokens": rng.randint(*cfg.tokens),
                    "tags": {"hour": int(24 * t / cfg.day_seconds)},
                }
            )
    out.sort(key=lambda it: it["at"])
    return out


def pool(cfg: Config, mode: str) -> dict[str, Any]:
    if mode == "fixed-1":
        peak: dict[str, Any] = {"replicas": 1}
    elif mode == "fixed-4":
        peak = {"replicas": cfg.max_replicas}
    else:
        peak = {
            "minReplicas": 1,
            "maxReplicas": cfg.max_replicas,
            "targetRequests": cfg.target,
            "scaleDownDelaySeconds": max(1, round(cfg.delay * cfg.time_scale)),
        }
    return {
        "apiVersion": "ollamafleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "day"},
        "spec": {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": [
                {"name": PEAK, **peak},
                *({"name": s, "replicas": 1} for s in STEADY),
            ],
        },
    }


# ---- the Kubernetes side ------------------------------------------------------------------
class Kube:
    """A real kube-apiserver (the test suite's fixture code) with the ModelPool CRD."""

    def __init__(self) -> None:
        from tests.harness.kube import KubeBinaries, KubeCluster, install_crd

        self.cluster = KubeCluster(KubeBinaries.locate())
        self.cluster.start()
        with self.cluster.client() as api:
            install_crd(api, CRD)

    def namespace(self, name: str, urls: Sequence[str]) -> None:
        """A namespace with one Ready pod object per emulated node."""
        from tests.harness.kube import (
            create_default_service_account,
            create_namespace,
            create_ollama_pod,
            set_pod_status,
        )

        with self.cluster.client() as api:
            create_namespace(api, name)
            create_default_service_account(api, name)
            for i, url in enumerate(urls):
                host, port = url.removeprefix("http://").rsplit(":", 1)
                create_ollama_pod(
                    api, name, f"ollama-{i}", labels={"app": "ollama"},
                    annotations={"ollamafleet.io/vram-bytes": "24Gi"},
                    port=int(port), node_name=f"gpu-node-{i}",
                )  # fmt: skip
                set_pod_status(api, name, f"ollama-{i}", ip=host, ready=True)

    def apply(self, namespace: str, body: dict[str, Any]) -> None:
        from kubernetes import client

        with self.cluster.client() as api:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "ollamafleet.io", "v1alpha1", namespace, "modelpools", body
            )

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes import client

        with self.cluster.client() as api:
            obj: Any = client.CustomObjectsApi(api).get_namespaced_custom_object(
                "ollamafleet.io", "v1alpha1", namespace, "modelpools", name
            )
        return dict(obj.get("status") or {})

    def stop(self) -> None:
        self.cluster.stop()


def _ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


# ---- sampling -------------------------------------------------------------------------------
def _sample(urls: list[str], stop: threading.Event, every: float) -> list[dict[str, Any]]:
    """Resident copies per model (and their bytes) over every pod, every ``every`` s."""
    series: list[dict[str, Any]] = []
    while not stop.is_set():
        copies: dict[str, int] = {}
        size: dict[str, int] = {}
        for u in urls:
            try:
                doc = json.loads(common.http_get(u + "/api/ps")[1])
            except (OSError, ValueError):
                continue
            for m in doc.get("models", []):
                name = str(m.get("name", "")).split(":")[0]
                copies[name] = copies.get(name, 0) + 1
                size[name] = size.get(name, 0) + int(m.get("size_vram") or m.get("size") or 0)
        series.append({"t": time.monotonic(), "copies": copies, "bytes": size})
        stop.wait(every)
    return series


def _integrate(series: list[dict[str, Any]], key: str, model: str | None, scale: float) -> float:
    """∫ value dt over the samples, in emulated seconds (left Riemann sum)."""
    total = 0.0
    for a, b in itertools.pairwise(series):
        values = a[key]
        v = values.get(model, 0) if model else sum(values.values())
        total += v * (b["t"] - a["t"]) / scale
    return total


def _cold_loads(ops: str) -> float:
    text = common.http_get(ops + "/metrics")[1].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ollama_fleet_cold_loads_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- one mode -------------------------------------------------------------------------------
def run_mode(cfg: Config, kube: Kube, mode: str, trace: list[dict[str, Any]]) -> dict[str, Any]:
    s = cfg.time_scale
    namespace = f"day-{mode.replace('.', '')}-{int(time.time())}"
    with common.workspace("autoscale") as (tmp, procs):
        urls = common.start_emulator(procs, fleet(cfg))
        kube.namespace(namespace, urls)
        ops_port = common.free_port()
        extra = [
            "--queue",
            "--queue-max-wait", f"{cfg.timeout * s:g}",
            "--ops-port", str(ops_port),
            "--poll-interval", f"{max(0.1, 2 * s):g}",
            "--default-load-seconds", f"{cfg.load_seconds * s:g}",
            "--default-service-seconds", f"{cfg.mean_service() * s:g}",
            "--stale-after", f"{max(3.0, 60 * s):g}",
            "--first-byte-timeout", f"{cfg.timeout * s:g}",
            "--max-connections", "0",
        ]  # fmt: skip
        _, base = common.start_balancer(
            procs, urls, extra=extra, backend_opts=f";slots={cfg.slots};vram=24GiB"
        )
        ops = f"http://127.0.0.1:{ops_port}"
        operator = procs.start(
            "operator",
            [
                common.PY, "-m", "ollama_fleet", "operator", "--standalone",
                "-n", namespace, "--kubeconfig", str(kube.cluster.kubeconfig),
                "--no-manifest-lookup", "--log-format", "json", "--log-level", "warning",
                "--resync-seconds", f"{max(1.0, cfg.resync * s):g}",
                "--status-interval-seconds", "0.5",
                "--balancer-url", ops,
                "--demand-interval-seconds", f"{max(0.1, cfg.interval * s):g}",
                "--demand-window-seconds", f"{max(0.2, cfg.window * s):g}",
            ],
        )  # fmt: skip
        kube.apply(namespace, pool(cfg, mode))
        common.wait_until(
            lambda: _ready(kube.status(namespace, "day")), 120, "the pool Ready", operator
        )
        stop = threading.Event()
        series: list[dict[str, Any]] = []
        sampler = threading.Thread(
            target=lambda: series.extend(_sample(urls, stop, max(0.05, cfg.sample_every * s))),
            daemon=True,
        )
        sampler.start()
        cold0 = _cold_loads(ops)
        hard = (cfg.day_seconds + cfg.timeout) * s + 60
        spec = {
            "mode": "trace",
            "url": base + "/v1/chat/completions",
            "trace": [{**it, "at": it["at"] * s} for it in trace],
            "timeout": cfg.timeout * s,
            "hard_timeout": hard,
        }
        try:
            res = common.run_loadgen(tmp, spec, timeout=hard + 30)
            if cfg.tail:
                time.sleep(cfg.tail * s)
        finally:
            stop.set()
            sampler.join(10)
        cold = _cold_loads(ops) - cold0
        final = kube.status(namespace, "day")
        if not operator.alive():
            raise RuntimeError(f"the operator exited:\n{operator.tail()}")
    recs = res["records"]
    for r in recs:
        for k in ("ttft", "e2e", "at"):
            if k in r:
                r[k] = r[k] / s
    peak_models = [m for m in final.get("models") or () if m.get("name") == PEAK]
    return {
        "mode": mode,
        "records": recs,
        "cold_loads": cold,
        "peak_copy_seconds": _integrate(series, "copies", PEAK, s),
        "all_gib_seconds": _integrate(series, "bytes", None, s) / GIB,
        "peak_copies": [
            {"t": (x["t"] - series[0]["t"]) / s, "copies": x["copies"].get(PEAK, 0)} for x in series
        ]
        if series
        else [],
        "autoscale": (peak_models[0].get("autoscale") if peak_models else None),
    }


def _stats(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ttft"] for r in recs if r.get("ok")]
    return {
        "requests": len(recs),
        "failed": sum(1 for r in recs if not r.get("ok")),
        "ttft_p50": common.pct(ok, 50),
        "ttft_p99": common.pct(ok, 99),
    }


def run(cfg: Config) -> dict[str, Any]:
    unknown = sorted(set(cfg.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"autoscale: unknown modes {unknown} (known: {', '.join(MODES)})")
    trace = make_trace(cfg)
    kube = Kube()
    rows = []
    try:
        for mode in cfg.modes:
            one = run_mode(cfg, kube, mode, trace)
            recs = one["records"]
            row = {
                "mode": mode,
                "all": _stats(recs),
                "peak": _stats([r for r in recs if r.get("model") == PEAK]),
                "steady": _stats([r for r in recs if r.get("model") != PEAK]),
                **{k: v for k, v in one.items() if k != "records"},
            }
            print(
                f"  {mode:8s} peak ttft p99={row['peak']['ttft_p99']:.2f}s "
                f"cold={row['cold_loads']:.0f} copy-s={row['peak_copy_seconds']:.0f} "
                f"failed={row['all']['failed']}",
                flush=True,
            )
            rows.append(row)
    finally:
        kube.stop()
    config = {
        **cfg.__dict__,
        "copy_rate": cfg.copy_rate(),
        "mean_service_s": cfg.mean_service(),
    }
    return {"rows": rows, "config": config, "trace_size": len(trace)}


def _copies_line(points: list[dict[str, Any]], day: float, buckets: int = 12) -> str:
    """The peak model's copies over the day, one figure per bucket (max in the bucket)."""
    out = []
    for i in range(buckets):
        lo, hi = i * day / buckets, (i + 1) * day / buckets
        vals = [p["copies"] for p in points if lo <= p["t"] < hi]
        out.append(str(max(vals)) if vals else "·")
    return " ".join(out)


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    head = (
        f"{c['pods']} pods x {c['slots']} slots; peak (8 GB, {c['load_seconds']:g} s to load) "
        f"offered {c['night']:g} -> {c['noon']:g} -> {c['night']:g} copies' worth over a "
        f"{c['day_seconds']:g} s business day, steady-a/b {c['steady']:g} each; "
        f"{doc['trace_size']} requests; auto: 1..{c['max_replicas']}, target {c['target']:g}, "
        f"delay {c['delay']:g} s, window {c['window']:g} s; client keep_alive "
        f"{c['keep_alive']:g} s; seed {c['seed']}; time_scale {c['time_scale']} "
        "(emulated seconds)\n\n"
    )
    rows = []
    for r in doc["rows"]:
        rows.append(
            [
                r["mode"], r["all"]["requests"], r["all"]["failed"], r["peak"]["ttft_p50"],
                r["peak"]["ttft_p99"], r["all"]["ttft_p99"], r["steady"]["ttft_p99"],
                r["cold_loads"], r["peak_copy_seconds"], r["all_gib_seconds"],
            ]
        )  # fmt: skip
    table = common.table(
        [
            "mode", "requests", "failed", "peak TTFT p50 s", "peak TTFT p99 s", "all TTFT p99 s",
            "steady TTFT p99 s", "cold loads", "peak copy-seconds", "all GiB-seconds",
        ],
        rows,
    )  # fmt: skip
    lines = [
        f"| {r['mode']} | {_copies_line(r['peak_copies'], c['day_seconds'])} |" for r in doc["rows"]
    ]
    copies = (
        "\n\npeak's resident copies over the day (max per 1/12 of it):\n\n"
        "| mode | copies |\n|---|---|\n" + "\n".join(lines)
    )
    text = head + table + copies
    by = {r["mode"]: r for r in doc["rows"]}
    if "auto" in by and "fixed-4" in by:
        a, f = by["auto"], by["fixed-4"]
        ttft = a["peak"]["ttft_p99"] / f["peak"]["ttft_p99"]
        held = a["peak_copy_seconds"] / f["peak_copy_seconds"]
        text += (
            f"\n\nauto / fixed-4: peak TTFT p99 {ttft:.2f} (target <= 1.10), "
            f"warm-copy GPU-seconds {held:.2f} (target <= 0.60)"
        )
    return text
