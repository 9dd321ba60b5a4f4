"""The container image, built by a real Docker daemon from the repository's Dockerfile on a
base image made with debootstrap (no image registry is reachable here), then run the way
the chart runs it: non-root, read-only root filesystem, no capabilities, and no network
but the container's own loopback.

If dockerd cannot start on this machine the test is skipped with dockerd's own words: that
is the only skip in the chart suite.  Everything else fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.harness.chart import ROOT, container, find, helm_path, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE = "ollama-fleet:chart-test"
BASE = "ollama-fleet-base:bookworm"
BASE_CA = "ollama-fleet-base:bookworm-ca"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _cache() -> Path:
    env = os.environ
    return Path(
        env.get("OLLAMA_FLEET_CACHE") or Path(env.get("HOME", "~")) / ".cache/ollama-fleet"
    ).expanduser()


def _tools() -> Path:
    """dockerd, debootstrap and the base root filesystem: installed by .ci/chart-tools.sh."""
    rootfs = _cache() / "base-bookworm-python3.tar"
    if not (shutil.which("dockerd") and shutil.which("docker") and rootfs.exists()):
        proc = subprocess.run(
            ["bash", str(ROOT / ".ci" / "chart-tools.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f".ci/chart-tools.sh failed:\n{proc.stderr}"
    assert shutil.which("dockerd"), "dockerd missing after .ci/chart-tools.sh"
    assert rootfs.exists()
    return rootfs


class Docker:
    def __init__(self, sock: Path) -> None:
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{proc.stderr[-4000:]}")
        return proc


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    rootfs = _tools()
    cache = _cache()
    # One daemon per data root at a time (its layer cache makes rebuilds take seconds).
    lock = (cache / ".docker-lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    run = Path(tempfile.mkdtemp(prefix="of-dockerd-", dir="/tmp"))
    sock = run / "docker.sock"
    log_path = run / "dockerd.log"
    log = log_path.open("wb")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
            "-H",
            f"unix://{sock}",
            f"--data-root={cache / 'docker-data'}",
            f"--exec-root={run / 'exec'}",
            f"--pidfile={run / 'docker.pid'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    d = Docker(sock)
    try:
        deadline = time.monotonic() + 60
        while True:
            if daemon.poll() is not None:
                reason = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                pytest.skip("dockerd cannot start on this machine: " + " | ".join(reason))
            if sock.exists() and d("version", check=False, timeout=10).returncode == 0:
                break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        _base_images(d, rootfs)
        yield d
    finally:
        daemon.terminate()  # only the daemon this fixture started (it stops its containerd)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        log.close()
        # dockerd leaves its default network namespace mounted in the exec root
        netns = run / "exec" / "netns" / "default"
        if netns.exists():
            subprocess.run(["umount", str(netns)], capture_output=True, check=False)
        shutil.rmtree(run, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _base_images(d: Docker, rootfs: Path) -> None:
    """BASE from the debootstrap tarball; BASE_CA adds this machine's CA bundle (TLS to
    PyPI is intercepted here) so that pip inside the build can verify it."""
    if d("image", "inspect", BASE, check=False).returncode != 0:
        d("import", str(rootfs), BASE)
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "ca.crt").write_bytes(CA_BUNDLE.read_bytes())
        Path(ctx, "Dockerfile").write_text(
            f"FROM {BASE}\n"
            "COPY ca.crt /etc/ssl/certs/ca-certificates.crt\n"
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n"
        )
        d("build", "-q", "-t", BASE_CA, ctx)


@pytest.fixture(scope="module")
def image(docker: Docker) -> str:
    start = time.monotonic()
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_CA}",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=600,
    )
    print(f"image built in {time.monotonic() - start:.1f}s")
    return IMAGE


# The chart's security settings, as docker flags.
LOCKED_DOWN = [
    "--network",
    "none",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]


def test_image_config(docker: Docker, image: str) -> None:
    (info,) = json.loads(docker("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"  # numeric: runAsNonRoot can verify it
    assert config["Entrypoint"] == ["ollama-fleet"]
    assert "11434/tcp" in config["ExposedPorts"]


def test_help(docker: Docker, image: str) -> None:
    out = docker("run", "--rm", *LOCKED_DOWN, image, "--help").stdout
    for command in ("balancer", "operator", "emulate"):
        assert command in out
    out = docker("run", "--rm", *LOCKED_DOWN, image, "operator", "--help").stdout
    assert "--all-namespaces" in out


DRIVER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time, urllib.request

    def call(path, body=None):
        req = urllib.request.Request("http://127.0.0.1:11434" + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)

    emulator = subprocess.Popen(["ollama-fleet", "emulate", "--nodes", "2", "--same-ip",
        "--base-ip", "127.0.0.1", "--port", "21434", "--time-scale", "0.01"])
    balancer = subprocess.Popen(["ollama-fleet", "balancer", "--host", "127.0.0.1",
        "--port", "11434", "--discovery", "static", "--default-slots", "2",
        "--backends", "a=http://127.0.0.1:21434,b=http://127.0.0.1:21435",
        "--poll-interval", "0.2"])
    deadline = time.monotonic() + 60
    while True:
        try:
            status, ready = call("/readyz")
            if status == 200 and len(ready["routable"]) == 2:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "balancer never became ready"
        time.sleep(0.2)
    print("READY", json.dumps(ready), flush=True)
    hook = subprocess.run([sys.executable, "-c", os.environ["HOOK"]])
    print("HOOK", hook.returncode, flush=True)
    status, chat = call("/api/chat", {"model": "llama3.2", "stream": False,
        "messages": [{"role": "user", "content": "hi"}]})
    print("CHAT", status, json.dumps(chat), flush=True)
    balancer.send_signal(signal.SIGTERM)
    print("BALANCER_EXIT", balancer.wait(30), flush=True)
    emulator.send_signal(signal.SIGTERM)
    emulator.wait(30)
    """
)


def test_emulator_and_balancer_run_in_the_image(docker: Docker, image: str) -> None:
    """Emulated Ollama nodes and the balancer, both from the image, on the container's
    loopback; the chart's `helm test` script passes against the balancer; a chat is
    routed; SIGTERM drains and exits 0."""
    objs = render(helm_path())
    hook = find(objs, "Pod", "-test")
    script = container(hook, "api-version")["command"][-1]
    url = "http://fleet-ollama-fleet.ai.svc:11434/api/version"
    assert url in script
    script = script.replace(url, "http://127.0.0.1:11434/api/version")
    proc = docker(
        "run",
        "--rm",
        *LOCKED_DOWN,
        "-e",
        f"HOOK={script}",
        "--entrypoint",
        "python3",
        image,
        "-c",
        DRIVER,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr[-3000:]}"
    lines = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line
    }
    ready = json.loads(lines["READY"])
    assert ready["ready"] is True and sorted(ready["routable"]) == ["a", "b"]
    assert lines["HOOK"] == "0"
    assert "/api/version ->" in out  # the hook printed what it got
    status, body = lines["CHAT"].split(" ", 1)
    chat = json.loads(body)
    assert status == "200" and chat["done"] is True and chat["message"]["role"] == "assistant"
    assert lines["BALANCER_EXIT"] == "0"


_LOCK_LINE = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
_INSPECT = (
    "import importlib.metadata as m, json, platform, sys\n"
    "print(json.dumps({'python_version': '%d.%d' % sys.version_info[:2],"
    " 'python_full_version': platform.python_version(), 'platform_machine': platform.machine(),"
    " 'dists': {d.metadata['Name']: d.version for d in m.distributions()}}))"
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_installs_exactly_the_locked_runtime_set(docker: Docker, image: str) -> None:
    """Every package in the image is the lock's runtime export at its exact version (for the
    image's Python and machine), and nothing else is installed but the project itself."""
    out = docker("run", "--rm", *LOCKED_DOWN, "--entrypoint", "python3", image, "-c", _INSPECT)
    seen = json.loads(out.stdout)
    env = {
        "python_version": seen["python_version"],
        "python_full_version": seen["python_full_version"],
        "platform_machine": seen["platform_machine"],
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    locked: dict[str, str] = {}
    for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines():
        m = _LOCK_LINE.match(line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate(env)):
            locked[_norm(m.group(1))] = m.group(2)
    installed = {_norm(k): v for k, v in seen["dists"].items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed.pop("ollama-fleet") == project
    for tool in ("pip", "setuptools", "wheel"):  # the venv's own, not the project's
        installed.pop(tool, None)
    assert installed == locked
