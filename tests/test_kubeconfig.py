"""One kubeconfig rule for the balancer (asyncio client) and the operator (blocking client)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpool_operator.settings import OperatorSettings
from ollama_balancer.settings import load_settings
from ollama_wire.kubeconfig import load_async, load_blocking
from ollama_wire.kubesource import KubeSource, kubeconfig_path


def kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    other: dict[str, Any] = {"cluster": "c", "user": "u", "namespace": "other-ns"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "secret-token"}}],
                "contexts": [
                    {"name": "main", "context": context},
                    {"name": "second", "context": other},
                ],
                "current-context": "main",
            }
        )
    )
    return path


async def load_either(flavour: str, source: KubeSource) -> tuple[str, str | None, str]:
    """(host, authorization header, namespace) as either client flavour loads them."""
    if flavour == "async":
        aio_cfg, namespace = await load_async(source)
        token = await aio_cfg.get_api_key_with_prefix("BearerToken")
        return aio_cfg.host, token, namespace
    cfg, namespace = load_blocking(source)
    return cfg.host, cfg.get_api_key_with_prefix("BearerToken"), namespace


FLAVOURS = [pytest.param("async", id="kubernetes.aio"), pytest.param("blocking", id="blocking")]
Case = Callable[[Path], tuple[KubeSource, str, str]]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            lambda d: (
                KubeSource(kubeconfig=str(kubeconfig(d / "k", "https://127.0.0.1:6443", "ai"))),
                "https://127.0.0.1:6443",
                "ai",
            ),
            id="explicit file, its context's namespace",
        ),
        pytest.param(
            lambda d: (
                KubeSource(kubeconfig=str(kubeconfig(d / "k", "https://127.0.0.1:6443"))),
                "https://127.0.0.1:6443",
                "default",
            ),
            id="no namespace in the context: default",
        ),
        pytest.param(
            lambda d: (
                KubeSource(
                    kubeconfig=str(kubeconfig(d / "k", "https://127.0.0.1:6443")), context="second"
                ),
                "https://127.0.0.1:6443",
                "other-ns",
            ),
            id="explicit context",
        ),
        pytest.param(
            lambda d: (
                KubeSource(fallback=str(kubeconfig(d / "home", "https://127.0.0.2:7443", "x"))),
                "https://127.0.0.2:7443",
                "x",
            ),
            id="not in a pod: the fallback file",
        ),
    ],
)
async def test_both_flavours_follow_one_rule(flavour: str, case: Case, tmp_path: Path) -> None:
    source, host, namespace = case(tmp_path)
    assert await load_either(flavour, source) == (host, "Bearer secret-token", namespace)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_missing_file_is_an_error(flavour: str, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Invalid kube-config file"):
        await load_either(flavour, KubeSource(kubeconfig=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("explicit", "environ", "path"),
    [
        pytest.param("/a", {"KUBECONFIG": "/b"}, "/a", id="explicit wins"),
        pytest.param("", {"KUBECONFIG": "/b:/c"}, "/b", id="first file of $KUBECONFIG"),
        pytest.param(None, {"KUBECONFIG": ":/c"}, "/c", id="empty entries skipped"),
        pytest.param("", {}, "", id="neither: in-cluster, then ~/.kube/config"),
    ],
)
def test_kubeconfig_path(explicit: str | None, environ: dict[str, str], path: str) -> None:
    assert kubeconfig_path(explicit, environ) == path


@pytest.mark.parametrize(
    ("flag", "environ", "path"),
    [
        pytest.param("", {"KUBECONFIG": "/b:/c"}, "/b", id="environment"),
        pytest.param("/a", {"KUBECONFIG": "/b"}, "/a", id="setting wins"),
        pytest.param("", {}, "", id="in-cluster"),
    ],
)
def test_balancer_and_operator_settings_agree(
    flag: str, environ: dict[str, str], path: str
) -> None:
    balancer = load_settings(None, {**environ, "OLLAMA_FLEET_KUBECONFIG": flag})
    operator = OperatorSettings.from_sources({"kubeconfig": flag or None}, environ)
    assert balancer.discovery.kubeconfig == (operator.cluster.kubeconfig or "") == path
