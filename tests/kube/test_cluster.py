"""Smoke tests of the real control plane fixture (etcd + kube-apiserver v1.20.2)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from tests.harness.kube import (
    Body,
    KubeBinaries,
    KubeCluster,
    as_json,
    create_namespace,
    create_node,
    create_ollama_pod,
    delete_pod,
    set_pod_ready,
    set_pod_status,
)


def _ready_condition(pod: Any) -> str | None:
    for cond in pod.status.conditions or []:
        if cond.type == "Ready":
            return str(cond.status)
    return None


def test_apiserver_is_ready_and_is_1_20(
    kube_cluster: KubeCluster, kube_api: client.ApiClient
) -> None:
    assert kube_cluster.is_ready()
    assert kube_cluster.url.startswith("https://127.0.0.1:")
    version = client.VersionApi(kube_api).get_code()
    assert version.git_version.startswith("v1.20.2")


def test_rbac_denies_an_unknown_token(kube_cluster: KubeCluster) -> None:
    cfg = client.Configuration()
    cfg.host = kube_cluster.url
    cfg.ssl_ca_cert = str(kube_cluster.ca_path)
    cfg.api_key = {"authorization": "Bearer not-a-token"}
    with client.ApiClient(cfg) as api:
        try:
            client.CoreV1Api(api).list_namespace()
        except client.ApiException as e:
            assert e.status == 401
        else:
            raise AssertionError("an unknown token was accepted")


def test_pod_gets_ip_and_readiness_through_status(
    kube_api: client.ApiClient, kube_namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    created = create_ollama_pod(
        kube_api,
        kube_namespace,
        "ollama-0",
        labels={"app": "ollama"},
        annotations={"ollamafleet.io/num-parallel": "4"},
    )
    assert created["spec"]["automountServiceAccountToken"] is False
    assert created["spec"]["containers"][0]["ports"][0]["name"] == "http"

    set_pod_status(kube_api, kube_namespace, "ollama-0", ip="127.0.0.2", ready=True)
    pod = core.read_namespaced_pod("ollama-0", kube_namespace)
    assert (pod.status.phase, pod.status.pod_ip) == ("Running", "127.0.0.2")
    assert _ready_condition(pod) == "True"
    assert (pod.metadata.annotations or {})["ollamafleet.io/num-parallel"] == "4"

    set_pod_ready(kube_api, kube_namespace, "ollama-0", False)
    pod = core.read_namespaced_pod("ollama-0", kube_namespace)
    assert _ready_condition(pod) == "False"
    assert pod.status.pod_ip == "127.0.0.2"

    delete_pod(kube_api, kube_namespace, "ollama-0")
    assert core.list_namespaced_pod(kube_namespace).items == []


def test_watch_sees_added_modified_deleted(kube_api: client.ApiClient, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    rv = core.list_namespaced_pod(kube_namespace).metadata.resource_version
    create_ollama_pod(kube_api, kube_namespace, "ollama-w")
    set_pod_status(kube_api, kube_namespace, "ollama-w", ip="127.0.0.3", ready=True)
    delete_pod(kube_api, kube_namespace, "ollama-w")

    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_pod, kube_namespace, resource_version=rv, timeout_seconds=5
    ):
        seen.append((event["type"], event["object"].status.pod_ip))
        if event["type"] == "DELETED":
            w.stop()
    assert seen[0] == ("ADDED", None)
    assert ("MODIFIED", "127.0.0.3") in seen
    assert seen[-1][0] == "DELETED"


def test_apiserver_restart_keeps_data_and_port(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    port = kube_cluster.port
    with kube_cluster.client() as api:
        client.CoreV1Api(api).create_namespaced_config_map(
            kube_namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="survivor"), data={"k": "v"}),
        )
    kube_cluster.stop_apiserver()
    assert not kube_cluster.is_ready()
    kube_cluster.start_apiserver()
    assert kube_cluster.port == port
    with kube_cluster.client() as api:
        cm = client.CoreV1Api(api).read_namespaced_config_map("survivor", kube_namespace)
    assert cm.data == {"k": "v"}


def test_crd_is_created_and_served(kube_api: client.ApiClient, kube_namespace: str) -> None:
    crd: Body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.ollamafleet.io"},
        "spec": {
            "group": "test.ollamafleet.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(kube_api)
    try:
        ext.create_custom_resource_definition(crd)
    except client.ApiException as e:
        assert e.status == 409  # created by an earlier run of this session
    custom = client.CustomObjectsApi(kube_api)
    body: dict[str, Any] = {
        "apiVersion": "test.ollamafleet.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    deadline = time.monotonic() + 30
    while True:  # the new resource is served a moment after the CRD is Established
        try:
            custom.create_namespaced_custom_object(
                "test.ollamafleet.io", "v1", kube_namespace, "widgets", body
            )
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    got = as_json(
        custom.get_namespaced_custom_object(
            "test.ollamafleet.io", "v1", kube_namespace, "widgets", "w1"
        )
    )
    assert got["spec"] == {"size": 3}
    bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    try:
        custom.create_namespaced_custom_object(
            "test.ollamafleet.io", "v1", kube_namespace, "widgets", bad
        )
    except client.ApiException as e:
        assert e.status == 422
    else:
        raise AssertionError("the structural schema was not enforced")


def test_controllers_turn_a_deployment_into_scheduled_pods(
    kube_cluster_with_controllers: KubeCluster,
) -> None:
    cluster = kube_cluster_with_controllers
    with cluster.client() as api:
        create_node(api, "gpu-node-1")
        create_namespace(api, "smoke-ctl")
        apps = client.AppsV1Api(api)
        labels = {"app": "ollama"}
        deployment: Body = {
            "metadata": {"name": "ollama"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "containers": [{"name": "ollama", "image": "ollama/ollama"}],
                        "tolerations": [
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
                        ],
                    },
                },
            },
        }
        # Pods appear once the ServiceAccount controller has made `default` in the namespace.
        apps.create_namespaced_deployment("smoke-ctl", deployment)
        deadline = time.monotonic() + 60
        core = client.CoreV1Api(api)
        while True:
            pods = core.list_namespaced_pod("smoke-ctl", label_selector="app=ollama").items
            # The session cluster is shared: other tests may have added Nodes too.
            if len(pods) == 2 and all(p.spec.node_name for p in pods):
                break
            assert time.monotonic() < deadline, [(p.metadata.name, p.spec.node_name) for p in pods]
            time.sleep(0.5)


def test_a_private_cluster_stops_exactly_what_it_started() -> None:
    cluster = KubeCluster(KubeBinaries.locate())
    with cluster:
        procs = [p.popen for p in cluster._procs.values()]
        workdir = cluster.dir
        assert len(procs) == 2 and cluster.is_ready()
    assert cluster.workdir is None and not workdir.exists()
    assert all(p.returncode is not None for p in procs)  # exited and reaped
    assert not any(Path(f"/proc/{p.pid}").exists() for p in procs)
