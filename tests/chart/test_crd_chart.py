"""The ollama-fleet-crds chart: CRDs that ``helm upgrade`` upgrades.

Offline: its CRDs are the source files (manifests/crds/) plus Helm's labels and the keep
policy.  On the real kube-apiserver: an install made by the main chart (CRDs from its crds/
directory) is taken over by the CRD chart with the commands of docs/upgrading.md, then
``helm upgrade`` of the CRD chart adds a field to ModelPool's schema — the API server serves
it — and ``helm uninstall`` leaves the CRDs (and so every ModelPool) in place.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.harness.chart import CHART, CRD, ROOT, helm_path, run_helm
from tests.harness.kube import KubeBinaries, KubeCluster, create_namespace

CRD_CHART = ROOT / "charts" / "ollama-fleet-crds"
UPGRADING = ROOT / "docs" / "upgrading.md"
CRD_NAMES = ["modelpools.ollamafleet.io"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _render(helm: str, chart: Path = CRD_CHART, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "ollama-fleet-crds", str(chart)]
    for s in sets:
        args += ["--set", s]
    result = run_helm(helm, args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_files_are_the_source_crds() -> None:
    sources = sorted((ROOT / "manifests" / "crds").glob("*.yaml"))
    assert [p.name for p in sources] == [CRD.name]
    for source in sources:
        assert (CRD_CHART / "files" / source.name).read_bytes() == source.read_bytes()
        assert (CHART / "crds" / source.name).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (CRD_CHART / "files").iterdir()) == [CRD.name]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD.name]


def test_rendered_crds_are_the_sources_plus_helm_metadata() -> None:
    helm = helm_path()
    rendered = {d["metadata"]["name"]: d for d in _render(helm)}
    sources = {d["metadata"]["name"]: d for d in _docs(CRD)}
    assert sorted(rendered) == sorted(sources) == sorted(CRD_NAMES)
    for name, source in sources.items():
        got = rendered[name]
        assert got["spec"] == source["spec"], name
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # keep=false drops the policy (uninstall then deletes the CRDs and every ModelPool)
    for got in _render(helm, CRD_CHART, "keep=false"):
        assert "helm.sh/resource-policy" not in (got["metadata"].get("annotations") or {})
    lint = run_helm(helm, ["lint", "--strict", str(CRD_CHART)])
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _adoption_commands() -> list[list[str]]:
    """The kubectl commands of docs/upgrading.md that hand existing CRDs to the CRD release."""
    text = UPGRADING.read_text()
    block = text[text.index("<!-- adopt-crds -->") : text.index("<!-- /adopt-crds -->")]
    return [line.split() for line in block.splitlines() if line.startswith("kubectl ")]


def _kubectl_to_patch(cmd: list[str], namespace: str) -> tuple[str, dict[str, Any]]:
    """``kubectl label|annotate crd NAME k=v... --overwrite`` as a metadata patch."""
    verb, kind, name, *rest = cmd[1:]
    assert kind == "crd" and name in CRD_NAMES, cmd
    pairs = dict(p.split("=", 1) for p in rest if "=" in p)
    pairs = {k: v.replace("$NAMESPACE", namespace) for k, v in pairs.items()}
    field = {"label": "labels", "annotate": "annotations"}[verb]
    return name, {"metadata": {field: pairs}}


@pytest.mark.kube
@pytest.mark.slow
def test_helm_upgrade_upgrades_the_crds(tmp_path: Path) -> None:
    """On an API server of its own: the session's servers have the CRDs installed already."""
    helm = helm_path()
    namespace = "crd-upgrade"
    with KubeCluster(KubeBinaries.locate()) as cluster, cluster.client() as api:
        kc = ["--kubeconfig", str(cluster.kubeconfig)]
        create_namespace(api, namespace)
        ext = client.ApiextensionsV1Api(api)
        # 1. an install made by the main chart: its crds/ directory creates the CRDs
        main = run_helm(
            helm,
            ["install", "fleet", str(CHART), "-n", namespace, "--set", "ollama.enabled=false",
             "--set", "existingFleet.discovery=dns", "--set", "existingFleet.dnsName=x", *kc],
        )  # fmt: skip
        assert main.returncode == 0, main.stderr
        # 2. the CRD chart cannot take over CRDs another release made ...
        args = ["install", "ollama-fleet-crds", str(CRD_CHART), "-n", namespace, *kc]
        refused = run_helm(helm, args)
        assert refused.returncode != 0
        assert "invalid ownership metadata" in refused.stderr, refused.stderr
        # 3. ... until they are handed over with the documented commands
        commands = _adoption_commands()
        assert {c[1] for c in commands} == {"label", "annotate"}
        for cmd in commands:
            name, patch = _kubectl_to_patch(cmd, namespace)
            ext.patch_custom_resource_definition(name, patch)
        adopted = run_helm(helm, args)
        assert adopted.returncode == 0, adopted.stderr

        # 4. helm upgrade with a chart whose ModelPool schema has a new field
        newer = tmp_path / "ollama-fleet-crds"
        shutil.copytree(CRD_CHART, newer)
        chart_yaml = newer / "Chart.yaml"
        chart_yaml.write_text(re.sub(r"^version: .*$", "version: 0.1.1", chart_yaml.read_text(),
                                     flags=re.MULTILINE))  # fmt: skip
        crd_file = newer / "files" / CRD.name
        doc = yaml.safe_load(crd_file.read_text())
        (version,) = [v for v in doc["spec"]["versions"] if v["storage"]]
        spec_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert "owner" not in spec_props
        spec_props["owner"] = {"type": "string", "description": "team owning the pool"}
        crd_file.write_text(yaml.safe_dump(doc))
        upgraded = run_helm(
            helm, ["upgrade", "ollama-fleet-crds", str(newer), "-n", namespace, *kc]
        )
        assert upgraded.returncode == 0, upgraded.stderr

        served = ext.read_custom_resource_definition(CRD_NAMES[0])
        (version,) = [v for v in served.spec.versions if v.storage]
        props = version.schema.open_apiv3_schema.properties["spec"].properties
        assert props["owner"].type == "string"
        # the API server keeps the new field (an unknown field would be pruned)
        co = client.CustomObjectsApi(api)
        pool = {
            "apiVersion": "ollamafleet.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": "owned"},
            "spec": {
                "selector": {"matchLabels": {"app": "ollama"}},
                "models": [{"name": "llama3.2:1b"}],
                "owner": "team-a",
            },
        }
        co.create_namespaced_custom_object("ollamafleet.io", "v1alpha1", namespace, "modelpools",
                                           pool)  # fmt: skip
        got = co.get_namespaced_custom_object(
            "ollamafleet.io", "v1alpha1", namespace, "modelpools", "owned"
        )
        assert got["spec"]["owner"] == "team-a"

        # 5. uninstalling the CRD release keeps the CRDs and the pools
        gone = run_helm(helm, ["uninstall", "ollama-fleet-crds", "-n", namespace, *kc])
        assert gone.returncode == 0, gone.stderr
        assert "kept due to the resource policy" in gone.stdout + gone.stderr
        for name in CRD_NAMES:
            ext.read_custom_resource_definition(name)
        assert co.get_namespaced_custom_object(
            "ollamafleet.io", "v1alpha1", namespace, "modelpools", "owned"
        )
        assert run_helm(helm, ["uninstall", "fleet", "-n", namespace, *kc]).returncode == 0
