"""A real Kubernetes control plane on loopback for tests: etcd + kube-apiserver v1.20.2.

There is no kubelet: Pods are API objects only.  A test makes an "Ollama pod" by creating it
and then writing ``status.phase``, ``status.podIP`` and the ``Ready`` condition through the
status subresource, so the pod can point at an emulated Ollama node on 127.0.0.x.

The binaries come from ``.ci/tools.sh`` (built once from Debian's ``kubernetes`` source
package and cached outside the clone).  Everything listens on 127.0.0.1 only, and
:meth:`KubeCluster.stop` kills exactly the processes this object started, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

#: A request body as JSON-like data: the client takes one wherever its signatures name a
#: model class (V1Pod, V1ConfigMap, ...), and tests read best written as data.
Body = Any


def as_json(value: object) -> dict[str, Any]:
    """A custom-object call's answer (typed ``object`` by the client) as the dict it is."""
    assert isinstance(value, dict), type(value)
    return value


__all__ = [
    "KubeBinaries",
    "KubeCluster",
    "KubeToolsMissing",
    "create_default_service_account",
    "create_namespace",
    "create_node",
    "create_ollama_pod",
    "delete_namespace",
    "delete_pod",
    "install_crd",
    "set_pod_ready",
    "set_pod_status",
]

KUBE_VERSION = "1.20.2"
ADMIN_TOKEN = "ollama-fleet-admin-token"  # a throwaway cluster on loopback
_HINT = "run `bash .ci/tools.sh` (or `source .ci/tools.sh`) to build and cache them"


class KubeToolsMissing(RuntimeError):
    """etcd or the Kubernetes binaries are not installed."""


@dataclass(frozen=True)
class KubeBinaries:
    kube_bin: Path
    etcd: Path

    @classmethod
    def locate(cls, environ: Mapping[str, str] | None = None) -> KubeBinaries:
        """Find the binaries from ``OLLAMA_FLEET_KUBE_BIN`` / ``OLLAMA_FLEET_ETCD`` (set by
        ``.ci/tools.sh``), falling back to its default cache and ``$PATH``."""
        env = os.environ if environ is None else environ
        cache = Path(
            env.get("OLLAMA_FLEET_CACHE") or Path(env.get("HOME", "~")) / ".cache/ollama-fleet"
        ).expanduser()
        default_bin = cache / f"kubernetes-{KUBE_VERSION}/bin"
        kube_bin = Path(env.get("OLLAMA_FLEET_KUBE_BIN") or default_bin)
        etcd = env.get("OLLAMA_FLEET_ETCD") or shutil.which("etcd") or ""
        missing = [
            str(kube_bin / name)
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
            if not os.access(kube_bin / name, os.X_OK)
        ]
        if not etcd or not os.access(etcd, os.X_OK):
            missing.append(f"etcd ({etcd or 'not on $PATH'})")
        if missing:
            raise KubeToolsMissing(f"missing {', '.join(missing)}: {_HINT}")
        return cls(kube_bin=kube_bin, etcd=Path(etcd))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class KubeCluster:
    """etcd + kube-apiserver (+ optionally controller-manager and scheduler) in a temp dir.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  The apiserver can be
    stopped and started again on the same port with the same etcd (:meth:`stop_apiserver`,
    :meth:`start_apiserver`, :meth:`restart_apiserver`) to test reconnects.
    """

    binaries: KubeBinaries
    controllers: bool = False
    workdir: Path | None = None
    ready_timeout: float = 60.0
    token: str = ADMIN_TOKEN
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    _procs: dict[str, _Proc] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    # ----------------------------------------------------------------- addresses & files
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def dir(self) -> Path:
        assert self.workdir is not None, "cluster not started"
        return self.workdir

    @property
    def ca_path(self) -> Path:
        """The apiserver's self-signed serving certificate, which is its own CA."""
        return self.dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    # ------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KubeCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ollama-fleet-kube-")
            self.workdir = Path(self._tmp.name)
        try:
            self._write_credentials()
            self._start_etcd()
            self.start_apiserver()
            self._write_kubeconfig()
            if self.controllers:
                self._start_controllers()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every process this cluster started (reverse order) and remove its files."""
        for name in reversed(list(self._procs)):
            self._procs.pop(name).stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None

    def stop_apiserver(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds: with a watch open, kube-apiserver
        would otherwise wait up to a minute for it to end."""
        proc = self._procs.pop("kube-apiserver", None)
        if proc is not None:
            proc.stop(timeout=grace)

    def start_apiserver(self) -> None:
        if "kube-apiserver" in self._procs and self._procs["kube-apiserver"].alive():
            return
        d = self.dir
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_bin / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--cert-dir={d / 'certs'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
            ],
        )
        self.wait_ready()

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def ensure_apiserver(self) -> None:
        """Start the apiserver again if a test stopped it (and did not restart it)."""
        proc = self._procs.get("kube-apiserver")
        if proc is None or not proc.alive():
            self._procs.pop("kube-apiserver", None)
            self.start_apiserver()

    def is_ready(self) -> bool:
        try:
            return self._get("/readyz", timeout=2.0) == "ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        proc = self._procs["kube-apiserver"]
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"kube-apiserver exited:\n{proc.tail()}")
            if self.ca_path.exists() and self.is_ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready after {self.ready_timeout}s:\n{proc.tail()}")

    # ----------------------------------------------------------------------- clients
    def api_client(self) -> client.ApiClient:
        """A new ``kubernetes`` ApiClient as admin; the caller closes it."""
        api: client.ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))
        return api

    @contextmanager
    def client(self) -> Iterator[client.ApiClient]:
        api = self.api_client()
        try:
            yield api
        finally:
            api.close()

    def etcd_compact(self) -> int:
        """Compact etcd up to its current revision (old resourceVersions expire); returns it."""
        status = self._etcd_post("/v3/kv/range", {"key": b64encode(b"\0").decode()})
        rev = int(status["header"]["revision"])
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def etcd_delete(self, key: str) -> int:
        """Delete a key straight from etcd, behind the apiserver's back (e.g. a pod while
        the apiserver is down: ``/registry/pods/NAMESPACE/NAME``); returns how many went."""
        body = {"key": b64encode(key.encode()).decode()}
        return int(self._etcd_post("/v3/kv/deleterange", body).get("deleted", 0))

    # ----------------------------------------------------------------------- internals
    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _get(self, path: str, timeout: float) -> str:
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as resp:
            return str(resp.read().decode())

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log_path = self.dir / f"{name}.log"
        log = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        except BaseException:
            log.close()
            raise
        proc = _Proc(name, popen, log, log_path)
        self._procs[name] = proc
        return proc

    def _write_credentials(self) -> None:
        d = self.dir
        (d / "certs").mkdir(exist_ok=True)
        (d / "tokens.csv").write_text(f'{self.token},admin,uid-admin,"system:masters"\n')
        if not (d / "sa.key").exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
                check=True,
                capture_output=True,
            )

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        proc = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--name=default",
                "--listen-metrics-urls=",
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"etcd exited:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"etcd not healthy:\n{proc.tail()}")

    def _write_kubeconfig(self) -> None:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))

    def _start_controllers(self) -> None:
        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",  # 1.20 still serves an insecure port on 0.0.0.0 unless disabled
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_bin / "kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                f"--service-account-private-key-file={self.dir / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                "--use-service-account-credentials=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube_bin / "kube-scheduler"),
                *common,
                f"--secure-port={free_port()}",
                f"--cert-dir={self.dir / 'sched-certs'}",
            ],
        )
        time.sleep(0.5)
        for name in ("kube-controller-manager", "kube-scheduler"):
            proc = self._procs[name]
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")


# --------------------------------------------------------------------------- helpers


def _ignore_conflict(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        if e.status != 409:
            raise


def create_namespace(api: client.ApiClient, name: str) -> None:
    """Create a namespace (already-exists is fine)."""
    _ignore_conflict(client.CoreV1Api(api).create_namespace, {"metadata": {"name": name}})


def create_default_service_account(api: client.ApiClient, namespace: str) -> None:
    """Without a controller-manager nobody creates the ``default`` ServiceAccount, and the
    API server refuses Pods whose service account does not exist."""
    _ignore_conflict(
        client.CoreV1Api(api).create_namespaced_service_account,
        namespace,
        {"metadata": {"name": "default"}},
    )


def delete_namespace(api: client.ApiClient, namespace: str) -> None:
    """Delete a namespace's pods at once, then the namespace.  (Without a controller-manager
    the namespace itself stays ``Terminating``; that does not matter in a test cluster.)"""
    core = client.CoreV1Api(api)
    try:
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        core.delete_namespace(namespace)
    except ApiException as e:
        if e.status != 404:
            raise


def create_node(
    api: client.ApiClient,
    name: str,
    *,
    pods: int = 110,
    extra_resources: Mapping[str, str] | None = None,
) -> None:
    """A Node object for the scheduler to bind Pods to (no kubelet runs behind it).

    Its status says Ready with room for ``pods`` pods, plus ``extra_resources`` in its
    capacity (e.g. ``{"nvidia.com/gpu": "8"}``, what a device plugin would advertise).
    Nothing renews the heartbeat, so about 40 s later the node-lifecycle controller
    marks it NotReady and taints it ``node.kubernetes.io/unreachable``: pods scheduled
    after that must tolerate ``node.kubernetes.io/not-ready`` and
    ``node.kubernetes.io/unreachable``.
    """
    core = client.CoreV1Api(api)
    _ignore_conflict(core.create_node, {"metadata": {"name": name}})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    resources = {"cpu": "64", "memory": "512Gi", "pods": str(pods), **(extra_resources or {})}
    core.patch_node_status(
        name,
        {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            }
        },
    )


def create_ollama_pod(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    port: int = 11434,
    port_name: str = "http",
    env: Mapping[str, str] | None = None,
    node_name: str | None = None,
    image: str = "ollama/ollama:0.5.7",
) -> dict[str, Any]:
    """Create an Ollama pod as an API object; returns it as JSON (a dict).

    ``node_name`` sets ``spec.nodeName`` directly; with the controller-manager running, a
    pod bound to a Node that does not exist is garbage-collected, so create the node first.
    """
    container: dict[str, Any] = {
        "name": "ollama",
        "image": image,
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    body: Body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": dict(labels or {"app": "ollama"}),
            "annotations": dict(annotations or {}),
        },
        "spec": {"automountServiceAccountToken": False, "containers": [container]},
    }
    if node_name:
        body["spec"]["nodeName"] = node_name
    core = client.CoreV1Api(api)
    created = core.create_namespaced_pod(namespace, body)
    result: dict[str, Any] = api.sanitize_for_serialization(created)
    return result


def set_pod_status(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    ip: str | None,
    ready: bool,
    phase: str = "Running",
) -> None:
    """Write what a kubelet would: phase, pod IP and the ``Ready`` condition."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, {"status": status})


def set_pod_ready(api: client.ApiClient, namespace: str, name: str, ready: bool) -> None:
    """Flip only the ``Ready`` condition (the pod keeps its IP)."""
    cond = "True" if ready else "False"
    client.CoreV1Api(api).patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": cond},
                    {"type": "ContainersReady", "status": cond},
                ]
            }
        },
    )


def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete at once (grace period 0: there is no kubelet to confirm a graceful stop)."""
    try:
        client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as e:
        if e.status != 404:
            raise


def install_crd(api: client.ApiClient, path: Path, timeout: float = 20.0) -> None:
    """Create (or replace) the CRD in ``path`` and wait until it is Established."""
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as e:
        if e.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not established")
