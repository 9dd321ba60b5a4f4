"""A real Prometheus scraping a real balancer and a real operator, in front of emulated Ollama.

:func:`running_observed_fleet` (behind the prometheus suite's session fixture
``observed_fleet``) starts, all on loopback and each as its own process:

- an emulated fleet of two Ollama nodes (``ollama-fleet emulate``);
- the kube-apiserver (``kube_cluster``) with the ModelPool CRD, two pods whose IP and port
  are the emulated nodes', and a ModelPool wanting three models (one that no registry has);
- the operator (``ollama-fleet operator --metrics-port``) reconciling that pool;
- the balancer (``ollama-fleet balancer --ops-port``) with API keys, in front of the nodes;
- Prometheus scraping the balancer's ops port and the operator's metrics port every second,
  with the project's alert rules loaded;

then sends traffic through the balancer (resident and cold models, two keys, anonymous and
unknown-model requests) and waits until Prometheus has scraped all of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kubernetes import client

from ollama_balancer.core.auth import hash_key

from .eventually import eventually_blocking
from .kube import (
    KubeCluster,
    create_default_service_account,
    create_namespace,
    create_ollama_pod,
    free_port,
    install_crd,
    set_pod_status,
)
from .prometheus import PrometheusServer, ScrapeJob
from .promtool import ROOT, RULES
from .redis import running_redis

__all__ = [
    "BALANCER_JOB",
    "KEYS",
    "LLAMA",
    "MISSING",
    "NAMESPACE",
    "OPERATOR_JOB",
    "TENANT_HEADER",
    "ObservedFleet",
    "running_observed_fleet",
]

CRD = ROOT / "manifests" / "crds" / "modelpools.ollamafleet.io.yaml"
NAMESPACE = "observed"  # the namespace label Prometheus gives both targets, like a ServiceMonitor
BALANCER_JOB = "ollama-fleet-balancer"
OPERATOR_JOB = "ollama-fleet-operator"
KEYS = {"team-a": "test-key-team-a", "team-b": "test-key-team-b", "team-d": "test-key-team-d"}
#: The header naming the tenant (usage per tenant): team-d sends it for two tenants.
TENANT_HEADER = "X-Tenant"
#: A key limited to one request a minute: its second request each round is a 429.
LIMITED = ("team-c", "test-key-team-c")
LLAMA, QWEN, EMBED, MISSING = "llama3.2:1b", "qwen2.5:7b", "nomic-embed-text:latest", "nosuch:7b"


@dataclass
class ObservedFleet:
    prometheus: PrometheusServer
    balancer: str  # client URL
    ops: str  # the balancer's ops port URL
    operator_metrics: str
    namespace: str
    sent: int  # requests sent through the balancer
    #: (client, tenant) -> prompt + generated tokens the answers reported to their clients
    usage: dict[tuple[str, str], int]


class _Process:
    """One ``ollama-fleet`` subcommand as a child process, its output in a file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ollama_fleet", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name}:\n" + "\n".join(text.splitlines()[-lines:])

    def wait_for_line(self, needle: str, timeout: float = 60.0, count: int = 1) -> list[str]:
        """The log's lines once ``count`` of them hold ``needle`` (fails at once if the
        process exits first)."""

        def printed() -> list[str] | None:
            lines = self.log_path.read_text(errors="replace").splitlines()
            if sum(needle in line for line in lines) >= count:
                return lines
            assert self.proc.poll() is None, f"{self.name} exited\n{self.tail()}"
            return None

        return eventually_blocking(
            printed,
            lambda: f"{self.name} to print {needle!r}\n{self.tail()}",
            timeout=timeout,
            interval=0.1,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _get(url: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body: bytes = resp.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _request(url: str, body: dict[str, Any], key: str | None = None) -> int:
    return _exchange(url, body, key)[0]


def _exchange(
    url: str, body: dict[str, Any], key: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def _tenant_traffic(url: str) -> tuple[int, dict[tuple[str, str], int]]:
    """team-d's requests for two tenants and none, through all three APIs, streamed and not;
    returns how many, and the tokens each (client, tenant) was told it used."""
    key = KEYS["team-d"]
    usage: dict[tuple[str, str], int] = {}
    sent = 0
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/api/generate", {"model": LLAMA, "prompt": "count to three", "stream": False}),
        ("/api/chat", {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": LLAMA, "messages": [{"role": "user", "content": "a"}]}),
        (
            "/v1/messages",
            {"model": LLAMA, "max_tokens": 64, "messages": [{"role": "user", "content": "b"}]},
        ),
    ]
    # Two rounds a few scrapes apart: a series is born with the first, and the second makes
    # it *increase* while Prometheus watches (the recording rule's increase() sees that).
    for round_ in range(2):
        if round_:
            time.sleep(2.5)
        sent += _tenant_round(url, key, calls, usage)
    return sent, usage


def _tenant_round(
    url: str,
    key: str,
    calls: list[tuple[str, dict[str, Any]]],
    usage: dict[tuple[str, str], int],
) -> int:
    sent = 0
    for tenant in ("acme", "globex", ""):
        headers = {TENANT_HEADER: tenant} if tenant else {}
        for path, body in calls:
            status, answer = _exchange(url + path, body, key, headers)
            assert status == 200, (path, answer[:300])
            sent += 1
            total = 0
            for line in answer.splitlines() or [answer]:
                if not line.strip():
                    continue
                doc = json.loads(line)
                u = doc.get("usage") or {}
                total += int(doc.get("prompt_eval_count") or 0) + int(doc.get("eval_count") or 0)
                total += int(u.get("prompt_tokens") or 0) + int(u.get("completion_tokens") or 0)
                total += int(u.get("input_tokens") or 0) + int(u.get("output_tokens") or 0)
            label = ("team-d", tenant or "none")
            usage[label] = usage.get(label, 0) + total
    return sent


MODELS: list[dict[str, Any]] = [
    {"name": LLAMA, "replicas": 1},
    {"name": EMBED, "replicas": 1},
    # no registry has it: the pull fails, the pool is Degraded, the model unroutable
    {"name": MISSING, "replicas": 1},
]


def _kube_side(api: client.ApiClient, nodes: list[tuple[str, str, int]]) -> None:
    """The CRD, the namespace, Ollama pods pointing at the emulated nodes, one ModelPool."""
    install_crd(api, CRD)
    create_namespace(api, NAMESPACE)
    create_default_service_account(api, NAMESPACE)
    for name, host, port in nodes:
        # bound to a (fictitious) node: the operator reports each pod's node in the status
        create_ollama_pod(
            api, NAMESPACE, name, labels={"app": "ollama"}, port=port, node_name=f"node-{name}"
        )
        set_pod_status(api, NAMESPACE, name, ip=host, ready=True)
    pool = {
        "apiVersion": "ollamafleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "chat"},
        "spec": {
            "selector": {"matchLabels": {"app": "ollama"}},
            "models": MODELS,
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "ollamafleet.io", "v1alpha1", NAMESPACE, "modelpools", pool
    )


def _until_not_resident(ops: str, model: str, timeout: float = 20.0) -> None:
    def resident_on() -> list[dict[str, Any]]:
        fleet = json.loads(_get(ops + "/-/fleet"))
        return [m for m in fleet["models"] if m["name"] == model and m["resident_on"]]

    eventually_blocking(
        resident_on, f"{model} not resident", accept=lambda r: not r, timeout=timeout, interval=0.1
    )


def _traffic(url: str, ops: str, nodes: list[str]) -> int:
    """Bounded traffic through the balancer; returns how many requests it answered with a
    record.  Rare events (cold loads, retries, 5xx) happen three times, a few scrapes apart:
    a series born at 1 has a rate of 0 (and a quantile of nothing), and these series carry a
    ``backend`` label, so with two pods three events make at least one series *increase*
    while Prometheus watches."""
    sent = 0
    generate = url + "/api/generate"
    a, b = KEYS["team-a"], KEYS["team-b"]
    for round_ in range(4):
        for key in (a, b):
            assert _request(generate, {"model": LLAMA, "prompt": "hi", "stream": False}, key) == 200
            sent += 1
        if round_ < 3:
            # a cold load: qwen is installed everywhere and loaded nowhere
            for node in nodes:
                _request(node + "/api/generate", {"model": QWEN, "keep_alive": 0})
            _until_not_resident(ops, QWEN)  # the balancer's next poll sees it unloaded
            assert _request(generate, {"model": QWEN, "prompt": "x", "stream": False}, a) == 200
            sent += 1
            # both pods fail once: a retry, two failed attempts, and a 5xx for the client
            for node in nodes:
                fault = {"fail_next": {"count": 1, "status": 500, "paths": ["/api/generate"]}}
                _request(node + "/-/emulator/faults", fault)
            assert _request(generate, {"model": LLAMA, "prompt": "x", "stream": False}, b) == 500
            sent += 1
            for node in nodes:
                _request(node + "/-/emulator/faults", {"clear": True})
        # an unknown model: a 404, counted under model "other"
        assert _request(generate, {"model": "no-such-model", "prompt": "x"}, b) == 404
        sent += 1
        # no key: refused (401) by the pipeline, one record like every answer
        assert _request(generate, {"model": LLAMA, "prompt": "x"}) == 401
        sent += 1
        # over its quota: 429, counted per key
        statuses = [
            _request(generate, {"model": LLAMA, "prompt": "x", "stream": False}, LIMITED[1])
            for _ in range(2)
        ]
        assert 429 in statuses
        sent += 2
        time.sleep(1.5)  # spread over several scrapes (every second)
    return sent


@contextmanager
def running_observed_fleet(kube_cluster: KubeCluster) -> Iterator[ObservedFleet]:
    """Start everything (the module docstring says what), send the traffic, wait for
    Prometheus to have scraped it; stop every process this started at the end."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ollama-fleet-obs-")))
        procs: list[_Process] = []

        def start(name: str, args: list[str]) -> _Process:
            p = _Process(name, args, workdir)
            procs.append(p)
            stack.callback(p.stop)
            return p

        try:
            emulator = start(
                "emulator",
                [
                    "emulate", "--nodes", "2", "--base-ip", "127.0.0.1", "--same-ip",
                    "--port", "0", "--time-scale", "0.01", "--context-length", "4096",
                    "--installed", f"{LLAMA},{QWEN}", "--loaded", LLAMA,
                ],
            )  # fmt: skip
            lines = emulator.wait_for_line("loaded:", count=2)
            urls = [ln.split("\t")[1] for ln in lines if "loaded:" in ln]
            nodes = []
            for i, u in enumerate(urls):
                host, node_port = u.removeprefix("http://").rsplit(":", 1)
                nodes.append((f"ollama-{i}", host, int(node_port)))

            kube_cluster.ensure_apiserver()
            with kube_cluster.client() as api:
                _kube_side(api, nodes)

            operator_port = free_port()
            start(
                "operator",
                [
                    "operator", "--kubeconfig", str(kube_cluster.kubeconfig), "--standalone",
                    "-n", NAMESPACE, "--resync-seconds", "2", "--attempts", "1",
                    "--metrics-port", str(operator_port), "--metrics-host", "127.0.0.1",
                    # no manifest lookup: the missing model's pull runs and fails (a failed
                    # pull series), and nothing asks the real registry
                    "--no-manifest-lookup",
                ],
            )  # fmt: skip
            operator_metrics = f"http://127.0.0.1:{operator_port}/metrics"

            keys = workdir / "keys.yaml"
            keys.write_text(
                "keys:\n"
                + "".join(
                    f"  - {{name: {n}, key_sha256: {hash_key(k)}}}\n" for n, k in KEYS.items()
                )
                + f"  - {{name: {LIMITED[0]}, key_sha256: {hash_key(LIMITED[1])}, "
                "requests_per_minute: 1}\n"
            )
            # Shared state on a real redis-server, and late binding: their series are scraped too.
            store = stack.enter_context(running_redis(workdir))
            port, ops_port = free_port(), free_port()
            start(
                "balancer",
                [
                    "balancer", "--host", "127.0.0.1", "--port", str(port),
                    "--ops-port", str(ops_port), "--auth-file", str(keys),
                    "--poll-interval", "0.5", "--shared-state", store.url, "--queue",
                    "--tenant-header", TENANT_HEADER,
                    "--backends", ",".join(f"{n[0]}={u}" for n, u in zip(nodes, urls, strict=True)),
                ],
            )  # fmt: skip
            balancer, ops = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
            _get(ops + "/readyz")
            _get(operator_metrics)

            prometheus = PrometheusServer(
                jobs=[
                    ScrapeJob(BALANCER_JOB, [f"127.0.0.1:{ops_port}"], {"namespace": NAMESPACE}),
                    ScrapeJob(
                        OPERATOR_JOB, [f"127.0.0.1:{operator_port}"], {"namespace": NAMESPACE}
                    ),
                ],
                rule_files=[RULES],
            )
            stack.callback(prometheus.stop)
            prometheus.start()
            prometheus.wait_for("sum(up)", lambda r: bool(r) and float(r[0]["value"][1]) == 2)

            # The operator pulls and loads, and fails on the missing model: Degraded.
            prometheus.wait_for(
                'ollama_fleet_operator_pools{condition="Degraded", status="True"}',
                lambda r: bool(r) and float(r[0]["value"][1]) == 1,
            )
            # A verdict is not retried until the spec changes, and the first actions may all
            # have run before the first scrape: a new generation (the missing model's default
            # keepAlive written out) pulls it once more while Prometheus watches, so the
            # action series increase within the queries' window.
            failed = 'sum(ollama_fleet_operator_actions_total{kind="pull", result="failed"})'
            before = float(prometheus.wait_for(failed, bool)[0]["value"][1])
            with kube_cluster.client() as api:
                client.CustomObjectsApi(api).patch_namespaced_custom_object(
                    "ollamafleet.io", "v1alpha1", NAMESPACE, "modelpools", "chat",
                    {"spec": {"models": [*MODELS[:2], {**MODELS[2], "keepAlive": -1}]}},
                )  # fmt: skip
            prometheus.wait_for(failed, lambda r: bool(r) and float(r[0]["value"][1]) > before)
            sent = _traffic(balancer, ops, urls)
            tenants_sent, usage = _tenant_traffic(balancer)
            sent += tenants_sent
            prometheus.wait_for(
                "sum(ollama_fleet_requests_total)",
                lambda r: bool(r) and float(r[0]["value"][1]) == sent,
            )
            time.sleep(2)  # two more scrapes: every series has samples after the traffic
            yield ObservedFleet(prometheus, balancer, ops, operator_metrics, NAMESPACE, sent, usage)
        except BaseException:
            for p in procs:
                print(p.tail(), file=sys.stderr)
            raise
