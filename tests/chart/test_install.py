"""``helm install`` into a real kube-apiserver 1.20 with controller-manager and scheduler.

There is no kubelet: the test checks what the control plane does with the chart's objects
(the API server accepts every object, the CRD serves ModelPools, the chart picks the API
versions 1.20 serves for PDB/HPA, Deployments and the StatefulSet produce Pods that the
scheduler binds to a GPU Node, each Ollama pod gets its PVC bound) and that
``helm uninstall`` removes what it installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.chart import CHART, VALUES, helm_path, run_helm
from tests.harness.eventually import eventually_blocking
from tests.harness.kube import Body, KubeCluster, as_json, create_namespace, create_node

pytestmark = [pytest.mark.kube, pytest.mark.slow]

NAMESPACE = "chart-install"
RELEASE = "fleet"
NODE = "gpu-node-chart"


@pytest.fixture(scope="module")
def cluster(kube_cluster_with_controllers: KubeCluster) -> Iterator[KubeCluster]:
    kube_cluster_with_controllers.ensure_apiserver()
    yield kube_cluster_with_controllers


@pytest.fixture(scope="module")
def api(cluster: KubeCluster) -> Iterator[client.ApiClient]:
    with cluster.client() as api:
        yield api


def _gpu_node(api: client.ApiClient) -> None:
    """A Ready Node with 8 GPUs (what the NVIDIA device plugin would advertise)."""
    create_node(api, NODE, extra_resources={"nvidia.com/gpu": "8"})


def _volumes(api: client.ApiClient, n: int) -> None:
    """PersistentVolumes the controller-manager binds the StatefulSet's claims to."""
    core = client.CoreV1Api(api)
    for i in range(n):
        body: Body = {
            "metadata": {"name": f"chart-models-{i}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/chart-models-{i}"},
            },
        }
        try:
            core.create_persistent_volume(body)
        except ApiException as e:
            if e.status != 409:
                raise


def _pods(api: client.ApiClient, component: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
    return list(client.CoreV1Api(api).list_namespaced_pod(NAMESPACE, label_selector=selector).items)


def _bound(pods: list[Any], n: int) -> list[Any] | None:
    bound = [p for p in pods if p.spec.node_name]
    return bound if len(bound) >= n else None


def _can(api: client.ApiClient, who: str, verb: str, resource: str, group: str) -> bool:
    plural, _, sub = resource.partition("/")
    request: Body = {
        "spec": {
            "user": f"system:serviceaccount:{NAMESPACE}:{RELEASE}-ollama-fleet-{who}",
            "resourceAttributes": {
                "namespace": NAMESPACE,
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": sub,
            },
        }
    }
    review = client.AuthorizationV1Api(api).create_subject_access_review(request)
    return bool(review.status.allowed)


def test_helm_install_and_uninstall(cluster: KubeCluster, api: client.ApiClient) -> None:
    helm = helm_path()
    kc = ["--kubeconfig", str(cluster.kubeconfig)]
    create_namespace(api, NAMESPACE)
    _gpu_node(api)
    _volumes(api, 2)

    result = run_helm(
        helm,
        [
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "-f",
            str(VALUES / "kube-install.yaml"),
            "--timeout",
            "60s",
            *kc,
        ],
    )
    assert result.returncode == 0, result.stderr
    # NOTES.txt: how to call the endpoint and apply a first ModelPool
    assert f"http://{RELEASE}-ollama-fleet.{NAMESPACE}.svc:11434" in result.stdout
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-ollama-fleet" in result.stdout
    assert "kind: ModelPool" in result.stdout
    assert "kubectl apply -f manifests/crds/" in result.stdout

    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    try:
        # the CRD from crds/ serves ModelPools; the pool from values was accepted by its schema
        pool = as_json(
            custom.get_namespaced_custom_object(
                "ollamafleet.io", "v1alpha1", NAMESPACE, "modelpools", "chat"
            )
        )
        assert pool["spec"]["models"][0]["name"] == "llama3.2:3b"
        assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "ollama"
        # 1.20 serves neither policy/v1 nor autoscaling/v2: the chart picked older versions
        # (read through the generic path: the Python client dropped those versions)
        pdbs = as_json(
            custom.list_namespaced_custom_object(
                "policy", "v1beta1", NAMESPACE, "poddisruptionbudgets"
            )
        )["items"]
        assert [p["metadata"]["name"] for p in pdbs] == [f"{RELEASE}-ollama-fleet-balancer"]
        hpas = as_json(
            custom.list_namespaced_custom_object(
                "autoscaling", "v2beta2", NAMESPACE, "horizontalpodautoscalers"
            )
        )["items"]
        assert [h["spec"]["minReplicas"] for h in hpas] == [2]
        nps = client.NetworkingV1Api(api).list_namespaced_network_policy(NAMESPACE)
        assert sorted(str(n.metadata.name) for n in nps.items) == [
            f"{RELEASE}-ollama-fleet-ollama",
            f"{RELEASE}-ollama-fleet-shared-state",
        ]
        # The bundled shared-state store: its pod is scheduled, its password generated once
        # and kept by an upgrade (helm lookup), and the balancer is told where it is.
        store_secret = f"{RELEASE}-ollama-fleet-shared-state"
        password = core.read_namespaced_secret(store_secret, NAMESPACE).data["password"]
        assert len(password) >= 40
        eventually_blocking(
            lambda: _bound(_pods(api, "shared-state"), 1), "shared-state pod bound", timeout=60
        )
        upgrade = run_helm(
            helm,
            [
                "upgrade",
                RELEASE,
                str(CHART),
                "-n",
                NAMESPACE,
                "-f",
                str(VALUES / "kube-install.yaml"),
                *kc,
            ],
        )
        assert upgrade.returncode == 0, upgrade.stderr
        assert core.read_namespaced_secret(store_secret, NAMESPACE).data["password"] == password
        assert "Shared state: bundled store at redis://" in upgrade.stdout
        env = {
            e.name: e.value
            for e in apps.read_namespaced_deployment(f"{RELEASE}-ollama-fleet-balancer", NAMESPACE)
            .spec.template.spec.containers[0]
            .env
        }
        assert env["OLLAMA_FLEET_SHARED_STATE"] == (
            f"redis://{RELEASE}-ollama-fleet-shared-state.{NAMESPACE}.svc:6379/0"
        )
        svc = core.read_namespaced_service(f"{RELEASE}-ollama-fleet", NAMESPACE)
        assert svc.spec.cluster_ip and (svc.spec.ports or [])[0].port == 11434

        # Deployments and the StatefulSet produce Pods, bound by the scheduler
        balancer = eventually_blocking(
            lambda: _bound(_pods(api, "balancer"), 1), "balancer pods bound", timeout=60
        )
        operator = eventually_blocking(
            lambda: _bound(_pods(api, "operator"), 1), "operator pod bound", timeout=60
        )
        ollama = eventually_blocking(
            lambda: _bound(_pods(api, "ollama"), 2), "ollama pods bound", timeout=90
        )
        # the HPA enforces minReplicas=2 (no metrics needed for that)
        eventually_blocking(
            lambda: _bound(_pods(api, "balancer"), 2), "2 balancer pods", timeout=60
        )
        assert {p.spec.node_name for p in ollama} == {NODE}  # the only node with GPUs
        for pod in balancer + operator:
            assert pod.spec.security_context.run_as_non_root is True
            (c,) = pod.spec.containers
            assert c.security_context.read_only_root_filesystem is True
        for pod in ollama:
            (c,) = pod.spec.containers
            assert c.resources.limits["nvidia.com/gpu"] == "1"
            assert pod.metadata.annotations["ollamafleet.io/num-parallel"] == "4"
        claims = core.list_namespaced_persistent_volume_claim(NAMESPACE).items
        assert sorted(str(c.metadata.name) for c in claims) == [
            f"models-{RELEASE}-ollama-fleet-ollama-0",
            f"models-{RELEASE}-ollama-fleet-ollama-1",
        ]
        assert all(c.status.phase == "Bound" for c in claims)
        assert operator[0].spec.service_account_name == f"{RELEASE}-ollama-fleet-operator"
        # RBAC as the API server evaluates it: what each ServiceAccount may and may not do
        for who, verb, resource, group, allowed in [
            ("balancer", "watch", "pods", "", True),
            ("balancer", "list", "secrets", "", False),
            ("balancer", "patch", "pods", "", False),
            ("operator", "patch", "modelpools/status", "ollamafleet.io", True),
            ("operator", "watch", "modelpools", "ollamafleet.io", True),
            ("operator", "create", "events", "", True),
            ("operator", "patch", "events", "", True),  # repeats bump one Event's count
            ("operator", "create", "leases", "coordination.k8s.io", True),  # leader election
            ("operator", "delete", "leases", "coordination.k8s.io", False),
            ("operator", "delete", "pods", "", False),
            ("operator", "get", "secrets", "", False),
        ]:
            assert _can(api, who, verb, resource, group) is allowed, (who, verb, resource)
    finally:
        result = run_helm(helm, ["uninstall", RELEASE, "-n", NAMESPACE, *kc])
    assert result.returncode == 0, result.stderr

    def gone() -> bool:
        return (
            not apps.list_namespaced_deployment(NAMESPACE).items
            and not apps.list_namespaced_stateful_set(NAMESPACE).items
            and not [
                s
                for s in core.list_namespaced_service(NAMESPACE).items
                if s.metadata.name != "kubernetes"
            ]
            and not core.list_namespaced_config_map(
                NAMESPACE, label_selector="app.kubernetes.io/managed-by=Helm"
            ).items
            and not client.RbacAuthorizationV1Api(api).list_namespaced_role(NAMESPACE).items
            and not as_json(
                custom.list_namespaced_custom_object(
                    "ollamafleet.io", "v1alpha1", NAMESPACE, "modelpools"
                )
            )["items"]
        )

    eventually_blocking(gone, "helm uninstall to remove the release's objects", timeout=60)
    # Pods are being deleted by the garbage collector (no kubelet confirms, so they stay
    # Terminating here); none is left running.
    eventually_blocking(
        lambda: all(
            p.metadata.deletion_timestamp for p in core.list_namespaced_pod(NAMESPACE).items
        ),
        "pods marked for deletion",
        timeout=60,
    )
    # Helm keeps CRDs (its policy), and Kubernetes keeps StatefulSet claims (the model
    # stores survive an uninstall; delete them to free the disks).
    client.ApiextensionsV1Api(api).read_custom_resource_definition("modelpools.ollamafleet.io")
    assert len(core.list_namespaced_persistent_volume_claim(NAMESPACE).items) == 2
    core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    core.delete_collection_namespaced_persistent_volume_claim(NAMESPACE)
