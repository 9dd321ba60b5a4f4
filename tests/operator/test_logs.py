"""The operator process logs like the balancer: one JSON object per line, kopf's included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.harness.kube import KubeCluster
from tests.harness.operator_env import GROUP, PLURAL, VERSION, install_modelpool_crd

pytestmark = [pytest.mark.kube]


@pytest.fixture(scope="module")
def crd(kube_cluster: KubeCluster) -> None:
    with kube_cluster.client() as api:
        install_modelpool_crd(api)


def pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelPool",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": "nothing-here"}},
            "models": [{"name": "tiny:1b"}],
        },
    }


async def test_operator_prints_json_lines(
    kube_cluster: KubeCluster,
    kube_api: client.ApiClient,
    kube_namespace: str,
    crd: None,
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ollama_fleet", "operator"),
        *("--log-format", "json", "--standalone", "-n", kube_namespace),
        *("--kubeconfig", str(kube_cluster.kubeconfig)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.stderr is not None
    records: list[dict[str, Any]] = []
    try:
        api = client.CustomObjectsApi(kube_api)
        await asyncio.to_thread(
            api.create_namespaced_custom_object,
            GROUP,
            VERSION,
            kube_namespace,
            PLURAL,
            pool("logged"),
        )

        def seen_kopf_object_record() -> bool:
            return any(r["logger"].startswith("kopf") and "object" in r for r in records)

        async with asyncio.timeout(60):
            while not seen_kopf_object_record():
                line = await proc.stderr.readline()
                assert line, f"the operator exited ({proc.returncode}) before kopf logged an object"
                records.append(json.loads(line))  # every line is one JSON object
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                rest = await proc.stderr.read()
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    records += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 0
    for record in records:
        assert {"event", "level", "logger", "timestamp"} <= set(record), record
        assert "settings" not in record and "k8s_ref" not in record, record
    loggers = {r["logger"] for r in records}
    assert any(name.startswith("modelpool_operator") for name in loggers), loggers
    assert any(name.startswith("kopf") for name in loggers), loggers
    objects = [r["object"] for r in records if "object" in r]
    assert {"kind": "ModelPool", "namespace": kube_namespace, "name": "logged"} in objects
