"""Real ``redis-server`` and ``redis-sentinel`` processes (Debian packages, installed by
.ci/tools.sh) as children of a test or a benchmark.

Started on loopback with no persistence; stopped by their PID only.  ``stop()`` then
``start()`` brings a server back on the same port, empty, as a restarted store would be;
``kill()`` is SIGKILL (a crash: nothing flushed, no goodbye to replicas or clients).

:class:`SentinelGroup` is a primary, its replicas and one sentinel watching them: what a
Sentinel deployment looks like from a client, small enough for a test.  With ``tls`` every
process speaks TLS only (:class:`TlsFiles` makes a throwaway CA and a loopback certificate
with the ``openssl`` command).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from ollama_wire.loose import loose

__all__ = ["RedisServer", "SentinelGroup", "TlsFiles", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a certificate for 127.0.0.1 signed by it (PEM files in one directory)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, workdir: Path) -> TlsFiles:
        openssl = shutil.which("openssl")
        assert openssl, "openssl is missing: run `bash .ci/tools.sh`"
        workdir.mkdir(parents=True, exist_ok=True)
        ca, ca_key = workdir / "ca.crt", workdir / "ca.key"
        cert, key, csr = workdir / "server.crt", workdir / "server.key", workdir / "server.csr"
        ext = workdir / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=ollama-fleet test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
        return cls(ca, cert, key)

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _answers(port: int, tls: TlsFiles | None, password: str | None = None) -> bool:
    """PING (after AUTH) gets PONG: the server is up and takes commands."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
        s: socket.socket = (
            tls.context().wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
        )
        with s:
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        replica_of: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: run `bash .ci/tools.sh` (Debian redis-server)"
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.replica_of = replica_of
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        port = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        argv = [
            self.binary, *port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.tls:
            argv += self.tls.server_args()
        if self.password:
            # The replicas of a Sentinel group share one password (masterauth for replication).
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        # A primary syncs a new replica at once (Redis waits 5 s by default for more to join).
        argv += ["--repl-diskless-sync-delay", "0"]
        return argv

    def start(self) -> None:
        assert self.proc is None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            with contextlib.suppress(OSError):
                if _answers(self.port, self.tls, self.password):
                    return
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: no shutdown, no goodbye."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=5)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")


SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
dir {dir}
{tls}
{auth}
sentinel monitor {service} 127.0.0.1 {primary} 1
sentinel down-after-milliseconds {service} {down_after_ms}
sentinel failover-timeout {service} {failover_timeout_ms}
sentinel parallel-syncs {service} 1
{master_auth}
"""


class SentinelGroup:
    """A primary with ``replicas`` replicas and one sentinel (quorum 1) watching them.

    ``down_after_ms``: how long the primary may be silent before the sentinel fails over
    (Sentinel's own default is 30 s; a test wants a fraction of a second).  ``password``
    protects the data nodes; ``sentinel_password`` the sentinel itself.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 1,
        service: str = "fleet",
        down_after_ms: int = 400,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.workdir = workdir
        self.service = service
        self.down_after_ms = down_after_ms
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        self.sentinel_port = free_port()
        first = RedisServer(workdir / "node-0", password=password, tls=tls)
        self.nodes = [first] + [
            RedisServer(workdir / f"node-{i}", password=password, replica_of=first.port, tls=tls)
            for i in range(1, replicas + 1)
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The balancer's ``shared_state`` URL (the data nodes' password left out)."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self._wait(lambda: all(self._replica_synced(n) for n in self.nodes[1:]), "replication")
        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        assert binary, "redis-sentinel is missing: run `bash .ci/tools.sh` (Debian redis-sentinel)"
        sdir = self.workdir / "sentinel"
        sdir.mkdir(parents=True, exist_ok=True)
        conf = sdir / "sentinel.conf"  # the sentinel rewrites it as it learns: its own copy
        tls = ""
        port = self.sentinel_port
        if self.tls:
            tls = (
                f"tls-port {port}\ntls-cert-file {self.tls.cert}\ntls-key-file {self.tls.key}\n"
                f"tls-ca-cert-file {self.tls.ca}\ntls-auth-clients no\ntls-replication yes"
            )
            port = 0
        conf.write_text(
            SENTINEL_CONF.format(
                port=port,
                dir=sdir,
                tls=tls,
                auth=f"requirepass {self.sentinel_password}" if self.sentinel_password else "",
                service=self.service,
                primary=self.nodes[0].port,
                down_after_ms=self.down_after_ms,
                failover_timeout_ms=max(1000, self.down_after_ms * 4),
                master_auth=(
                    f"sentinel auth-pass {self.service} {self.password}" if self.password else ""
                ),
            )
        )
        argv = [binary, str(conf)] + ([] if binary.endswith("sentinel") else ["--sentinel"])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Ready once the sentinel has seen every replica (it learns them from the primary's
        # INFO): a failover before that would find nothing to promote.
        self._wait(lambda: self._known_replicas() >= len(self.nodes) - 1, "the sentinel")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for node in self.nodes:
            node.stop()

    # ---- plumbing: redis-py's synchronous client, one short connection per question
    def _client(self, port: int, password: str | None) -> redis.Redis:
        tls: dict[str, object] = (
            {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls is not None else {}
        )
        return redis.Redis(
            host="127.0.0.1", port=port, password=password, socket_timeout=1,
            decode_responses=True, **tls,  # type: ignore[arg-type]
        )  # fmt: skip

    def primary(self) -> RedisServer:
        """The node the sentinel names as primary now."""
        with self._client(self.sentinel_port, self.sentinel_password) as c:
            _host, port = loose(c.sentinel_get_master_addr_by_name)(self.service)
        return next(n for n in self.nodes if n.port == int(port))

    def wait_failover(self, old: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Until the sentinel names another primary than ``old``, and it takes writes."""
        found: list[RedisServer] = []

        def moved() -> bool:
            with contextlib.suppress(StopIteration, OSError, redis.RedisError, TypeError):
                now = self.primary()
                if now is not old and self._role(now) == "master":
                    found.append(now)
                    return True
            return False

        self._wait(moved, "a failover", timeout)
        return found[-1]

    def _role(self, node: RedisServer) -> str:
        with self._client(node.port, self.password) as c:
            return str(loose(c.role)()[0])

    def _replica_synced(self, node: RedisServer) -> bool:
        with (
            contextlib.suppress(OSError, redis.RedisError),
            self._client(node.port, self.password) as c,
        ):
            return bool(loose(c.info)("replication").get("master_link_status") == "up")
        return False

    def _known_replicas(self) -> int:
        with (
            contextlib.suppress(OSError, redis.RedisError),
            self._client(self.sentinel_port, self.sentinel_password) as c,
        ):
            return len(loose(c.sentinel_slaves)(self.service))
        return -1

    def _wait(self, cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                assert self.proc.poll() is None, f"redis-sentinel exited: {self.proc.returncode}"
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
