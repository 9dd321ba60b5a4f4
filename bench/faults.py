"""Benchmark: the shared scheduler under faults (issue #24).

The same seeded bursty trace runs through the same fleet with and without faults, and the
table says what the faults cost.

**Fleet.** ``pods`` emulated Ollama pods, **each its own process** (so one can be SIGKILLed),
every model on disk, VRAM for two models each; the three most popular models pinned on two
pods each, the others loaded on demand and dropped after 30 s idle, so loads go on all along
(:func:`bench.fleets.faults_fleet`); ``replicas`` balancer processes sharing state behind a
round-robin nginx front that names the replica that answered (``X-Upstream``).  The store is
a real ``redis-server``, or a primary, a replica and a ``redis-sentinel``
(:class:`bench.redis_server.SentinelGroup`).

**Faults** (emulated seconds into the trace, mid-burst; ``pod and replica only`` stops after
the first two, to show what losing a pod costs by itself): a pod is SIGKILLed (``victim``: by
default ``node-0``, which holds a pinned copy of the most popular model and is the busiest pod
in most runs — one fixed pod keeps runs comparable; ``busiest`` picks the pod with the most
requests in flight at that moment), then one balancer replica, then the store — ``store
restarted empty``: the redis-server is SIGKILLed and a new, empty one starts on the same port
``store_gap`` later;
``sentinel failover``: the primary is SIGKILLed and the sentinel promotes the replica.

**Measured.** Failed requests (not 200, or a stream without its ``[DONE]``), split into
*unavoidable* — in flight, at the moment of its death, on the pod or the replica that died —
and the rest; cold loads (every pod's ``loads_started``, sampled, the dead pod's last sample
kept) in total and per phase; TTFT p50/p99 (emulated seconds); leases leaked (a lease TTL
after the trace, every live replica's held leases and the store's unexpired ones); store
reconnects and fallbacks (live replicas).  Targets: no avoidable failure, no leak, cold
loads and TTFT p99 at most ``TOLERANCE`` times the runs without faults (medians over runs).
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from ollama_wire.loose import loose

from . import common, routing
from .fleets import faults_fleet
from .redis_server import SentinelGroup

SCENARIOS = ("no faults", "pod and replica only", "store restarted empty", "sentinel failover")
#: The scenarios in which the store goes away (the others keep it: no degrade policy applies).
STORE_FAULTS = SCENARIOS[2:]
#: Issue #24's targets: with the faults, cold loads and TTFT p99 at most 1.5x without.
TOLERANCE = 1.5
PREFIX = "ollama-fleet"


@dataclass
class Config:
    pods: int = 6
    replicas: int = 3
    models: int = 10
    time_scale: float = 0.25
    rate: float = 2.5  # requests per emulated second (mean; bursts at 1.7x, lulls at 0.3x)
    duration: float = 100.0  # emulated seconds of arrivals
    zipf: float = 1.1
    seed: int = 24
    timeout: float = 300.0  # emulated seconds a client waits
    scenarios: tuple[str, ...] = SCENARIOS
    # Faults, in emulated seconds into the trace (the second burst runs from 40 to 60).
    kill_pod_at: float = 42.0
    victim: str = "node-0"  # or "busiest"
    kill_replica_at: float = 46.0
    kill_store_at: float = 50.0
    store_gap: float = 10.0  # store restarted empty: how long until the new one starts
    lease_ttl: float = 30.0  # emulated seconds (the balancers get it scaled)
    lease_renew: float = 10.0
    #: ``shared_state_degrade`` policies to compare (``--policies``); each fault scenario
    #: runs once per policy, the run without faults once (no outage: the policy is idle).
    policies: tuple[str, ...] = ("remember",)
    hold: float = 6.0  # emulated seconds a held cold-load decision waits (policy "hold")
    #: Extra balancer flags.
    extra: tuple[str, ...] = ()
    repeats: int = 1
    phases: tuple[str, ...] = ("before", "pod, replica", "store", "after")


QUICK = Config(duration=80.0)
SMOKE = Config(
    pods=3,
    replicas=2,
    models=5,
    time_scale=0.05,
    rate=1.5,
    duration=40.0,
    kill_pod_at=10.0,
    kill_replica_at=12.0,
    kill_store_at=14.0,
    store_gap=10.0,
    timeout=600.0,
)


@dataclass
class Fault:
    """One fault as it happened: what, on whom, and when (real seconds into the trace)."""

    kind: str
    target: str
    at: float


@dataclass
class Store:
    """The shared store of one run: a redis-server (restartable on its port) or a group."""

    procs: common.Procs
    url: str = ""
    proc: common.Proc | None = None
    port: int = 0
    group: SentinelGroup | None = None

    @classmethod
    def standalone(cls, procs: common.Procs) -> Store:
        proc, url = common.start_redis(procs)
        return cls(procs, url, proc, int(url.rsplit(":", 1)[1].split("/")[0]))

    @classmethod
    def sentinel(cls, procs: common.Procs) -> Store:
        group = SentinelGroup(procs.workdir / "sentinel", down_after_ms=400)
        group.start()
        return cls(procs, group.url, group=group)

    def kill(self) -> str:
        if self.group is not None:
            primary = self.group.primary()
            primary.kill()
            return f"primary :{primary.port}"
        assert self.proc is not None
        self.proc.popen.send_signal(signal.SIGKILL)
        self.proc.popen.wait(5)
        return f"redis-server :{self.port}"

    def restart_empty(self) -> None:
        self.proc, _ = common.start_redis(self.procs, name="redis-again", port=self.port)

    def client(self) -> redis.Redis:
        port = self.group.primary().port if self.group is not None else self.port
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()


def _pod_config(fleet: dict[str, Any], i: int) -> dict[str, Any]:
    return {**fleet, "nodes": [fleet["nodes"][i]]}


def _state(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(common.http_get(url + "/-/emulator/state", timeout=1)[1])
    return doc


def _busy(url: str) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return sum(int(r["in_flight"]) + int(r["waiting"]) for r in _state(url)["runners"])
    return -1


class LoadSampler(threading.Thread):
    """Every pod's ``loads_started`` every ``every`` seconds; a dead pod keeps its last."""

    def __init__(self, urls: list[str], every: float) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.every = every
        self.last = [0] * len(urls)
        self.series: list[tuple[float, int]] = []
        self.t0 = time.monotonic()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for i, u in enumerate(self.urls):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self.last[i] = int(_state(u)["stats"]["loads_started"])
            self.series.append((time.monotonic() - self.t0, sum(self.last)))
            self.halt.wait(self.every)

    def stop(self) -> int:
        self.halt.set()
        self.join(10)
        return sum(self.last)

    def loads_between(self, start: float, end: float) -> int:
        """Loads started in [start, end) (seconds since the sampler's t0)."""

        def at(t: float) -> int:
            before = [n for s, n in self.series if s <= t]
            return before[-1] if before else 0

        return at(end) - at(start)


def _metric(url: str, name: str) -> float:
    status, body = common.http_get(url + "/metrics")
    if status != 200:
        return float("nan")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _leaks(store: Store, live: list[str]) -> tuple[int, int]:
    """(leases the live replicas still hold, unexpired lease entries in the store)."""
    held = sum(int(common.shared_status(u).get("leases_held", 0)) for u in live)
    in_store = 0
    with store.client() as client:
        now_ms = int(time.time() * 1000)
        for key in loose(client.scan_iter)(f"{PREFIX}:lease:*"):
            in_store += int(loose(client.zcount)(key, now_ms, "+inf"))
    return held, in_store


def _inject(
    cfg: Config,
    scenario: str,
    start_at: float,
    pods: list[common.Proc],
    pod_urls: list[str],
    balancers: list[common.Proc],
    store: Store,
) -> tuple[list[Fault], threading.Thread]:
    """The faults of ``scenario`` at their trace times, from a thread; returns what it did."""
    s = cfg.time_scale
    done: list[Fault] = []

    def at(emulated: float) -> None:
        time.sleep(max(0.0, start_at + emulated * s - time.time()))

    def now() -> float:
        return time.time() - start_at

    def run() -> None:
        if scenario == "no faults":
            return
        at(cfg.kill_pod_at)
        if cfg.victim == "busiest":
            busy = [_busy(u) for u in pod_urls]
            victim = max(range(len(pods)), key=lambda i: busy[i])
        else:
            victim = int(cfg.victim.removeprefix("node-"))
        pods[victim].popen.send_signal(signal.SIGKILL)
        done.append(Fault("pod", f"node-{victim}", now()))
        at(cfg.kill_replica_at)
        balancers[1].popen.send_signal(signal.SIGKILL)
        done.append(Fault("replica", balancers[1].name, now()))
        if scenario not in STORE_FAULTS:
            return  # what losing a pod and a replica costs by itself, for comparison
        at(cfg.kill_store_at)
        done.append(Fault("store", store.kill(), now()))
        if scenario == "store restarted empty":
            at(cfg.kill_store_at + cfg.store_gap)
            store.restart_empty()
            done.append(Fault("store back", "empty", now()))
        else:
            assert store.group is not None
            old = next(n for n in store.group.nodes if n.proc is None)
            store.group.wait_failover(old)
            done.append(Fault("store back", "promoted replica", now()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return done, thread


def run_one(cfg: Config, scenario: str, policy: str = "remember") -> dict[str, Any]:
    s = cfg.time_scale
    fleet = faults_fleet(cfg.pods, cfg.models, s)
    models = [m["name"].split(":")[0] for m in fleet["catalogue"]]
    trace_cfg = routing.Config(rate=cfg.rate, duration=cfg.duration, zipf=cfg.zipf, seed=cfg.seed)
    trace = [{**it, "at": it["at"] * s} for it in routing.make_trace(trace_cfg, "bursty", models)]
    node = fleet["nodes"][0]
    backend_opts = f";slots={node['num_parallel']};vram={node['vram']}"
    flags = [
        "--poll-interval", f"{max(0.1, 5 * s):g}",
        "--default-load-seconds", f"{15 * s:g}",
        "--default-service-seconds", f"{3 * s:g}",
        "--stale-after", f"{max(3.0, 150 * s):g}",
        "--lease-ttl", f"{cfg.lease_ttl * s:g}",
        "--lease-renew-interval", f"{cfg.lease_renew * s:g}",
        "--shared-state-degrade", policy,
        "--shared-state-degraded-hold", f"{cfg.hold * s:g}",
        *cfg.extra,
    ]  # fmt: skip
    with common.workspace("faults") as (tmp, procs):
        pods: list[common.Proc] = []
        pod_urls: list[str] = []
        for i in range(cfg.pods):
            (url,) = common.start_emulator(procs, _pod_config(fleet, i), name=f"pod-{i}")
            pods.append(procs.procs[-1])
            pod_urls.append(url)
        store = (
            Store.sentinel(procs) if scenario == "sentinel failover" else Store.standalone(procs)
        )
        try:
            balancers: list[common.Proc] = []
            bal_urls: list[str] = []
            for i in range(cfg.replicas):
                proc, url = common.start_balancer(
                    procs, pod_urls, extra=[*flags, "--shared-state", store.url],
                    backend_opts=backend_opts, name=f"balancer-{i}",
                )  # fmt: skip
                balancers.append(proc)
                bal_urls.append(url)
            common.wait_shared(bal_urls)
            _front, front = common.start_nginx(
                procs, bal_urls, balance="round_robin", name="front", tell_upstream=True
            )
            start_at = time.time() + 1.0
            hard_timeout = (cfg.duration + cfg.timeout) * s + 60
            spec = {
                "mode": "trace",
                "url": front + "/v1/chat/completions",
                "trace": trace,
                "timeout": cfg.timeout * s,
                "hard_timeout": hard_timeout,
                "start_at": start_at,
            }
            sampler = LoadSampler(pod_urls, max(0.1, s))
            sampler.t0 = time.monotonic() + (start_at - time.time())
            sampler.start()
            faults, injector = _inject(cfg, scenario, start_at, pods, pod_urls, balancers, store)
            try:
                res = common.run_loadgen(tmp, spec, timeout=hard_timeout + 30)
            finally:
                injector.join(60)
                cold = sampler.stop()
            killed_replica = {f.target for f in faults if f.kind == "replica"}
            live = [
                u for p, u in zip(balancers, bal_urls, strict=True) if p.name not in killed_replica
            ]
            # Leases of requests that ended must be gone once a TTL has passed (renewals
            # stop for them; a replica that still holds one has leaked it).
            time.sleep(cfg.lease_ttl * s + 1.0)
            held, in_store = _leaks(store, live)
            reconnects = sum(_metric(u, "ollama_fleet_shared_store_reconnects_total") for u in live)
            fallbacks = sum(int(common.shared_status(u).get("fallbacks", 0)) for u in live)
        finally:
            store.stop()
    names = {p.name: u for p, u in zip(balancers, bal_urls, strict=True)}
    row = _row(cfg, scenario, res["records"], faults, sampler, cold, held, in_store,
               reconnects, fallbacks, names)  # fmt: skip
    row["policy"] = policy if scenario in STORE_FAULTS else "-"
    return row


def _row(
    cfg: Config,
    scenario: str,
    recs: list[dict[str, Any]],
    faults: list[Fault],
    sampler: LoadSampler,
    cold: int,
    held: int,
    in_store: int,
    reconnects: float,
    fallbacks: int,
    replica_urls: dict[str, str],
) -> dict[str, Any]:
    s = cfg.time_scale
    when = {f.kind: f for f in faults}
    failed = [r for r in recs if not (r.get("ok") and r.get("complete"))]
    unavoidable = [r for r in failed if _in_flight_on_the_dead(r, when, replica_urls)]
    ok = [r for r in recs if r.get("ok") and r.get("complete")]
    ttft = [r["ttft"] / s for r in ok]
    phases = _phases(cfg, when)
    return {
        "scenario": scenario,
        "requests": len(recs),
        "failed_unavoidable": len(unavoidable),
        "failed_avoidable": len(failed) - len(unavoidable),
        "failures": sorted({str(r.get("status")) for r in failed}),
        "failed_detail": [
            {
                "status": r.get("status"),
                "pod": r.get("backend", ""),
                "replica": r.get("upstream", ""),
                "at": r.get("at", 0.0) / s,
                "end": r.get("end", 0.0) / s,
                "unavoidable": r in unavoidable,
            }
            for r in failed
        ],
        "cold_loads": cold,
        "cold_by_phase": {name: sampler.loads_between(a, b) for name, (a, b) in phases.items()},
        "cold_by_window": _windows(sampler, cfg),
        "ttft_p50": common.pct(ttft, 50),
        "ttft_p99": common.pct(ttft, 99),
        "leases_leaked": max(held, in_store),
        "leases_held": held,
        "leases_in_store": in_store,
        "store_reconnects": reconnects,
        "fallbacks": fallbacks,
        "faults": [{"kind": f.kind, "target": f.target, "at": f.at / s} for f in faults],
    }


def _in_flight_on_the_dead(
    r: dict[str, Any], when: dict[str, Fault], replica_urls: dict[str, str]
) -> bool:
    def across(fault: Fault | None) -> bool:
        return fault is not None and r.get("at", 0.0) <= fault.at <= r.get("end", 0.0) + 0.05

    pod, rep = when.get("pod"), when.get("replica")
    if pod is not None and r.get("backend") == pod.target and across(pod):
        return True
    if rep is None:
        return False
    # nginx names every upstream it tried ("A, B"): the dead replica among them counts.
    address = replica_urls[rep.target].removeprefix("http://")
    return address in str(r.get("upstream", "")).split(", ") and across(rep)


def _phases(cfg: Config, when: dict[str, Fault]) -> dict[str, tuple[float, float]]:
    """Real-time bounds of the phases: before the faults, pod and replica gone, store gone,
    and after the store is back (faults as they happened; planned times without faults)."""
    s = cfg.time_scale
    end = (cfg.duration + cfg.timeout) * s

    def t(kind: str, planned: float) -> float:
        return when[kind].at if kind in when else planned * s

    bounds = [
        0.0,
        t("pod", cfg.kill_pod_at),
        t("store", cfg.kill_store_at),
        t("store back", cfg.kill_store_at + cfg.store_gap),
        end,
    ]
    return {name: (bounds[i], bounds[i + 1]) for i, name in enumerate(cfg.phases)}


def _windows(sampler: LoadSampler, cfg: Config, width: float = 5.0) -> list[int]:
    """Cold loads per ``width`` emulated seconds, over the trace."""
    s = cfg.time_scale
    n = int(cfg.duration // width) + 1
    return [sampler.loads_between(i * width * s, (i + 1) * width * s) for i in range(n)]


def run(cfg: Config) -> dict[str, Any]:
    rows = []
    # Repeats interleaved, so a busier minute on the machine hits every set-up alike.
    for rep in range(1, cfg.repeats + 1):
        for scenario, policy in _setups(cfg):
            row = run_one(cfg, scenario, policy)
            row["run"] = rep
            print(
                f"  {scenario:22s} {row['policy']:9s} run {rep} cold={row['cold_loads']:<3d} "
                f"ttft p99={row['ttft_p99']:.2f}s failed={row['failed_unavoidable']}+"
                f"{row['failed_avoidable']} leaked={row['leases_leaked']} "
                f"reconnects={row['store_reconnects']:g}",
                flush=True,
            )
            rows.append(row)
    return {"rows": rows, "config": cfg.__dict__, "targets": targets(rows)}


def _setups(cfg: Config) -> list[tuple[str, str]]:
    out = []
    for scenario in cfg.scenarios:
        policies = cfg.policies if scenario in STORE_FAULTS else cfg.policies[:1]
        out += [(scenario, policy) for policy in policies]
    return out


def _median(rows: list[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in rows if r[key] == r[key]]
    return statistics.median(vals) if vals else float("nan")


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each faulty (scenario, policy) against the runs without faults: medians over the runs
    (one run of this trace can start a few more loads than the next: process timing decides
    which side of a poll a decision falls on).  Failures and leaks are summed, not medians."""
    base = [r for r in rows if r["scenario"] == "no faults"]
    if not base:
        return []
    loads0, ttft0 = _median(base, "cold_loads"), _median(base, "ttft_p99")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["scenario"] != "no faults":
            groups.setdefault((r["scenario"], r.get("policy", "-")), []).append(r)
    out = []
    for (scenario, policy), rs in groups.items():
        loads = _median(rs, "cold_loads") / loads0 if loads0 else float("nan")
        ttft = _median(rs, "ttft_p99") / ttft0 if ttft0 else float("nan")
        avoidable = sum(int(r["failed_avoidable"]) for r in rs)
        leaked = sum(int(r["leases_leaked"]) for r in rs)
        out.append(
            {
                "scenario": scenario,
                "policy": policy,
                "runs": len(rs),
                "cold_loads_ratio": loads,
                "ttft_p99_ratio": ttft,
                "avoidable": avoidable,
                "leaked": leaked,
                "met": avoidable == 0 and leaked == 0 and loads <= TOLERANCE and ttft <= TOLERANCE,
            }
        )
    return out


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    head = (
        f"{c['pods']} pods (one process each) x 16 GiB, {c['models']} models (Zipf "
        f"s={c['zipf']}), {c['replicas']} balancer replicas behind a round-robin nginx, bursty "
        f"{c['rate']} req/s for {c['duration']:g} s, seed {c['seed']}, time_scale "
        f"{c['time_scale']} (times in emulated seconds). Faults: pod {c['victim']} SIGKILLed at "
        f"{c['kill_pod_at']:g} s, a replica at {c['kill_replica_at']:g} s, the store at "
        f"{c['kill_store_at']:g} s (back empty {c['store_gap']:g} s later, or failed over by "
        "Sentinel).\n\n"
    )
    rows = [
        [r["scenario"], r.get("policy", "-"), r.get("run", 1), r["requests"],
         r["failed_unavoidable"], r["failed_avoidable"], r["cold_loads"], r["ttft_p50"],
         r["ttft_p99"], r["leases_leaked"], r["store_reconnects"], r["fallbacks"]]
        for r in doc["rows"]
    ]  # fmt: skip
    table = common.table(
        ["scenario", "degrade", "run", "requests", "failed, unavoidable", "failed, avoidable",
         "cold loads",
         "TTFT p50 s", "TTFT p99 s", "leases leaked", "store reconnects", "fallbacks"],
        rows,
    )  # fmt: skip
    phases = list(c["phases"])
    by_phase = common.table(
        ["scenario", "degrade", "run", *(f"cold loads: {p}" for p in phases), "per 5 s window"],
        [
            [r["scenario"], r.get("policy", "-"), r.get("run", 1),
             *(r["cold_by_phase"][p] for p in phases),
             " ".join(str(n) for n in r["cold_by_window"])]
            for r in doc["rows"]
        ],
    )  # fmt: skip
    verdicts = common.table(
        ["scenario", "degrade", "runs", "avoidable failures", "leases leaked",
         "cold loads / no faults", "TTFT p99 / no faults", "targets met?"],
        [
            [x["scenario"], x.get("policy", "-"), x["runs"], x["avoidable"], x["leaked"],
             x["cold_loads_ratio"], x["ttft_p99_ratio"],
             "yes" if x["met"] else "**no**"]
            for x in doc["targets"]
        ],
    )  # fmt: skip
    return (
        head
        + table
        + "\n\nCold loads by phase (before the faults; pod and replica gone; store gone; "
        + "after the store is back):\n\n"
        + by_phase
        + "\n\nTargets (issue #24): 0 avoidable failures, 0 leases leaked, cold loads and "
        + f"TTFT p99 at most {TOLERANCE:g}x the runs without faults (medians over the runs).\n\n"
        + verdicts
    )


__all__ = [
    "QUICK",
    "SCENARIOS",
    "SMOKE",
    "STORE_FAULTS",
    "Config",
    "render",
    "run",
    "run_one",
    "targets",
]
