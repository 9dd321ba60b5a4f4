"""sharedState in the chart: none | bundled (a Valkey pod) | external (the user's Redis),
rendered offline, validated, and fed to the balancer's real settings loader; NOTES warns
when several replicas run without it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ollama_balancer.core.shared.address import parse_store_url
from ollama_balancer.settings import load_settings
from tests.harness.chart import (
    CHART,
    EXAMPLES,
    VALUES,
    container,
    env_of,
    find,
    find_all,
    helm_path,
    render,
    run_helm,
    selector_matches,
    template_args,
    validate_builtin,
)

PRODUCTION = EXAMPLES / "values-production.yaml"
EXTERNAL = VALUES / "shared-external.yaml"
SENTINEL = VALUES / "shared-sentinel.yaml"


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


def _balancer(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deploy = find(objs, "Deployment", "-balancer")
    return deploy, container(deploy, "balancer")


def _mounted_secret(deploy: dict[str, Any], path: str) -> str:
    """The Secret whose volume is mounted where ``path`` lives."""
    c = container(deploy, "balancer")
    # The deepest mount holding the path (the settings ConfigMap is mounted above it).
    mount = max(
        (m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")),
        key=lambda m: len(m["mountPath"]),
    )
    (volume,) = [
        v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    assert mount.get("readOnly") is True
    return str(volume["secret"]["secretName"])


def test_none_by_default(helm: str) -> None:
    objs = render(helm)
    _, c = _balancer(objs)
    assert not [e for e in env_of(c) if e.startswith("OLLAMA_FLEET_SHARED_STATE")]
    assert not [o for o in objs if o["metadata"]["name"].endswith("-shared-state")]


def test_bundled_store(helm: str, tmp_path: Path) -> None:
    objs = render(helm, [PRODUCTION])
    validate_builtin(objs, tmp_path)
    deploy, c = _balancer(objs)
    env = env_of(c)
    settings = load_settings(environ=env)  # what the balancer would start with
    address = parse_store_url(settings.shared.url)
    assert (address.host, address.port, address.password) == (
        "fleet-ollama-fleet-shared-state.ai.svc",
        6379,
        None,
    )
    secret_name = _mounted_secret(deploy, settings.shared.password_file)
    secret = find(objs, "Secret", "-shared-state")
    assert secret["metadata"]["name"] == secret_name
    assert settings.shared.password_file.endswith("/password")
    assert len(secret["data"]["password"]) >= 40  # base64 of 40 random characters

    store = find(objs, "Deployment", "-shared-state")
    assert store["spec"]["replicas"] == 1
    sc = container(store, "store")
    assert sc["image"] == "valkey/valkey:8.1.1" and sc["command"] == ["valkey-server"]
    args = sc["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--requirepass") + 1] == "$(STORE_PASSWORD)"
    assert args[args.index("--maxmemory") + 1] == "400mb"  # the production example's
    (pw,) = sc["env"]
    assert pw["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": "password"}
    pod = store["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False

    svc = find(objs, "Service", "-shared-state")
    store_labels = store["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(svc["spec"]["selector"], store_labels)
    assert svc["spec"]["ports"][0]["port"] == 6379

    policy = find(objs, "NetworkPolicy", "-shared-state")
    assert selector_matches(policy["spec"]["podSelector"]["matchLabels"], store_labels)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    balancer_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(peer["podSelector"]["matchLabels"], balancer_labels)
    for other in ("Deployment", "StatefulSet"):
        for workload in find_all(objs, other):
            if (
                workload is not deploy
                and workload["metadata"]["name"] != deploy["metadata"]["name"]
            ):
                labels = workload["spec"]["template"]["metadata"]["labels"]
                assert not selector_matches(peer["podSelector"]["matchLabels"], labels)


def test_bundled_redis_image(helm: str) -> None:
    sets = [
        "sharedState.mode=bundled",
        "sharedState.bundled.image.repository=redis",
        "sharedState.bundled.image.tag=7.2",
        "sharedState.bundled.command=redis-server",
    ]
    sc = container(find(render(helm, sets=sets), "Deployment", "-shared-state"), "store")
    assert (sc["image"], sc["command"]) == ("redis:7.2", ["redis-server"])


def test_external_store(helm: str, tmp_path: Path) -> None:
    objs = render(helm, [EXTERNAL])
    validate_builtin(objs, tmp_path)
    deploy, c = _balancer(objs)
    settings = load_settings(environ=env_of(c))
    assert settings.shared.url == "rediss://redis.infra.svc:6380/2"
    assert settings.shared.password_file == "/etc/ollama-fleet/shared-state/redis-password"
    assert _mounted_secret(deploy, settings.shared.password_file) == "fleet-redis"
    assert settings.shared.ca_file == "/etc/ollama-fleet/shared-state-ca/ca.pem"
    assert _mounted_secret(deploy, settings.shared.ca_file) == "fleet-redis-ca"
    assert not [o for o in objs if o["metadata"]["name"].endswith("-shared-state")]


def test_external_sentinel(helm: str, tmp_path: Path) -> None:
    objs = render(helm, [SENTINEL])
    validate_builtin(objs, tmp_path)
    deploy, c = _balancer(objs)
    settings = load_settings(environ=env_of(c))  # what the balancer would start with
    address = parse_store_url(settings.shared.url)
    assert address.sentinels == (
        ("sentinel-0.redis.infra.svc", 26379),
        ("sentinel-1.redis.infra.svc", 26379),
    )
    assert (address.service, address.db, address.tls, address.password) == ("fleet", 0, True, None)
    assert _mounted_secret(deploy, settings.shared.password_file) == "fleet-redis"
    assert settings.shared.sentinel_password_file.endswith("/sentinel-password")
    assert _mounted_secret(deploy, settings.shared.sentinel_password_file) == "fleet-redis-sentinel"
    assert _mounted_secret(deploy, settings.shared.ca_file) == "fleet-redis-ca"
    assert not [o for o in objs if o["metadata"]["name"].endswith("-shared-state")]


def test_external_without_password(helm: str) -> None:
    sets = ["sharedState.mode=external", "sharedState.external.url=redis://r:6379/0"]
    env = env_of(_balancer(render(helm, sets=sets))[1])
    assert env["OLLAMA_FLEET_SHARED_STATE"] == "redis://r:6379/0"
    assert "OLLAMA_FLEET_SHARED_STATE_PASSWORD_FILE" not in env


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        pytest.param(["sharedState.mode=sometimes"], "sharedState.mode must be one of", id="mode"),
        pytest.param(
            ["sharedState.mode=external"], "sharedState.external.url: String length", id="no url"
        ),
        pytest.param(
            ["sharedState.mode=external", "sharedState.external.url=http://r"],
            "sharedState.external.url: Does not match pattern",
            id="scheme",
        ),
        pytest.param(
            ["sharedState.bundled.command=memcached"],
            "sharedState.bundled.command must be one of",
            id="command",
        ),
        pytest.param(
            ["sharedState.mode=external", "sharedState.external.url=redis://:pw@r:6379"],
            "put the password in a Secret",
            id="password in the url",
        ),
        pytest.param(
            [
                "sharedState.mode=external",
                "sharedState.external.url=redis://r:6379",
                "sharedState.external.tls.caSecret=ca",
            ],
            "tls.caSecret needs a rediss:// or rediss+sentinel:// URL",
            id="CA without TLS",
        ),
        pytest.param(
            [
                "sharedState.mode=external",
                "sharedState.external.url=redis+sentinel://s:26379/fleet",
                "sharedState.external.tls.caSecret=ca",
            ],
            "tls.caSecret needs a rediss:// or rediss+sentinel:// URL",
            id="CA without TLS, sentinel",
        ),
        pytest.param(
            [
                "sharedState.mode=external",
                "sharedState.external.url=redis+sentinel://:pw@s1/fleet",
            ],
            "put the password in a Secret",
            id="password in the sentinel url",
        ),
        pytest.param(
            [
                "sharedState.mode=external",
                "sharedState.external.url=redis://r:6379",
                "sharedState.external.sentinel.existingSecret=s",
            ],
            "sentinel.existingSecret needs a redis+sentinel://",
            id="sentinel password without sentinel",
        ),
    ],
)
def test_bad_values_are_refused(helm: str, sets: list[str], message: str) -> None:
    result = run_helm(helm, template_args(sets=sets))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# ------------------------------------------------------------------------------ NOTES


def _notes(helm: str, tmp_path: Path, values: list[Path] = (), sets: list[str] = ()) -> str:  # type: ignore[assignment]
    """NOTES.txt as `helm install` prints it: rendered through a copy of the chart in which
    its text is a named template that a ConfigMap includes (helm template skips NOTES)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    body = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_body.tpl").write_text(
        '{{- define "test.notes" -}}\n' + body + "\n{{- end }}\n"
    )
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ include "test.notes" . | toJson }}\n'
    )
    args = template_args(values, sets)
    args[2] = str(chart)
    args += ["--show-only", "templates/zz-notes.yaml"]
    result = run_helm(helm, args)
    assert result.returncode == 0, result.stderr
    import yaml

    return str(yaml.safe_load(result.stdout)["data"]["notes"])


@pytest.mark.parametrize(
    ("sets", "values", "expected", "absent"),
    [
        pytest.param(
            [],
            [],
            "WARNING: 2 balancer replicas WITHOUT shared state",
            "Shared state:",
            id="default",
        ),
        pytest.param(
            ["balancer.autoscaling.enabled=true"],
            [],
            "WARNING: an HPA runs up to 6 balancer replicas WITHOUT shared state",
            "Shared state:",
            id="hpa",
        ),
        pytest.param(["balancer.replicas=1"], [], "ollama-fleet", "WARNING", id="one replica"),
        pytest.param(
            [],
            [PRODUCTION],
            "Shared state: bundled store at redis://fleet-ollama-fleet-shared-state.ai.svc:6379/0",
            "WARNING",
            id="production",
        ),
        pytest.param(
            [],
            [EXTERNAL],
            "Shared state: external store at rediss://redis.infra.svc",
            "WARNING",
            id="external",
        ),
    ],
)
def test_notes_warn_without_shared_state(
    helm: str, tmp_path: Path, sets: list[str], values: list[Path], expected: str, absent: str
) -> None:
    notes = _notes(helm, tmp_path, values, sets)
    assert expected in " ".join(notes.split())
    assert absent not in notes
