"""A real Prometheus (Debian's ``prometheus``) on loopback, for tests.

It scrapes the targets it is given every second, loads the project's alert rules, and
answers PromQL through its HTTP API.  :meth:`PrometheusServer.stop` ends exactly the process
it started, by PID.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .eventually import eventually_blocking
from .kube import free_port
from .promtool import prometheus_tool

__all__ = ["PrometheusServer", "QueryError", "ScrapeJob"]


class QueryError(AssertionError):
    """Prometheus refused a query (parse or evaluation error); the message is Prometheus'."""


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: Sequence[str]  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PrometheusServer:
    jobs: Sequence[ScrapeJob]
    rule_files: Sequence[Path] = ()
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ollama-fleet-prometheus-")
        d = Path(self._tmp.name)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job.name,
                    "static_configs": [{"targets": list(job.targets), "labels": dict(job.labels)}],
                }
                for job in self.jobs
            ],
        }
        (d / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (d / "prometheus.log").open("wb") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                [
                    prometheus_tool("prometheus"),
                    f"--config.file={d / 'prometheus.yml'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--storage.tsdb.path={d / 'data'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 30) -> str:
        if self._tmp is None:
            return ""
        text = (Path(self._tmp.name) / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------- the HTTP API
    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as e:  # 400 (bad query), 422 (evaluation error)
            doc = json.load(e)
        if doc.get("status") != "success":
            raise QueryError(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        data: list[dict[str, str]] = self.api("series", **{"match[]": match})
        return data

    def wait_for(
        self, expr: str, accept: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """The result of ``expr`` once ``accept`` takes it (Prometheus scrapes every second)."""
        return eventually_blocking(
            lambda: self.query(expr), expr, accept=accept, timeout=timeout, interval=0.25
        )
