"""The lock: one source of versions for every install (.ci/run, the image, the quick start).

``uv.lock`` holds every Python package with exact versions and hashes; ``requirements/*.txt``
are its exports for pip; ``bash .ci/lock --check`` (run by .ci/run before any test) fails with
a clear message when pyproject.toml, the lock and the exports disagree.  The image's side is in
tests/chart/test_image.py (it installs exactly the runtime export).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".venv" / "bin" / "uv"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+?)(?:\s|$)")


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a requirements export (every line, whatever its marker)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def lock() -> dict[str, object]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _uv() -> str:
    found = str(UV) if UV.exists() else shutil.which("uv")
    assert found, "uv is in requirements/test.txt: .ci/run installs it into .venv"
    return found


def _copy(tmp_path: Path) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "lock", tmp_path / ".ci" / "lock")
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def _check(where: Path) -> subprocess.CompletedProcess[str]:
    # Offline: a lock that matches needs no index, and one that does not must fail anyway.
    env = {**os.environ, "UV": _uv(), "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1"}
    return subprocess.run(
        ["bash", str(where / ".ci" / "lock"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_checkout_agrees_with_its_lock() -> None:
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "agree" in proc.stderr


def test_a_dependency_added_without_relocking_fails_the_check(tmp_path: Path) -> None:
    where = _copy(tmp_path)
    pyproject = where / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "orjson>=3.9",\n' in text
    pyproject.write_text(text.replace('    "orjson>=3.9",\n', '    "orjson>=3.9",\n    "six",\n'))
    proc = _check(where)
    assert proc.returncode == 1
    assert "uv.lock does not match pyproject.toml" in proc.stderr
    assert "run 'bash .ci/lock'" in proc.stderr


def test_an_export_edited_by_hand_fails_the_check(tmp_path: Path) -> None:
    where = _copy(tmp_path)
    runtime = where / "requirements" / "runtime.txt"
    text = runtime.read_text()
    version = pins(runtime)["aiohttp"]
    runtime.write_text(text.replace(f"aiohttp=={version}", "aiohttp==3.0.0"))
    proc = _check(where)
    assert proc.returncode == 1
    assert "requirements/runtime.txt not exported from the current uv.lock" in proc.stderr


def test_exports_are_the_locked_versions_with_hashes() -> None:
    packages = {p["name"]: p for p in lock()["package"]}  # type: ignore[attr-defined]
    for name in ("runtime", "test", "bench"):
        path = ROOT / "requirements" / f"{name}.txt"
        found = pins(path)
        assert found, path
        for pkg, version in found.items():
            assert packages[pkg]["version"] == version, (name, pkg)
        pinned = sum(1 for line in path.read_text().splitlines() if _PIN.match(line))
        assert path.read_text().count("--hash=sha256:") >= pinned  # every pin has its hashes
    runtime, test, bench = (
        pins(ROOT / "requirements" / f"{n}.txt") for n in ("runtime", "test", "bench")
    )
    assert runtime.items() <= test.items() <= bench.items()
    assert {"aiohttp", "kopf", "redis", "kubernetes"} <= runtime.keys()
    assert {"mypy", "ruff", "import-linter", "pytest", "uv"} <= test.keys() - runtime.keys()
    assert {"matplotlib", "py-spy"} <= bench.keys() - test.keys()


def test_one_version_names_the_chart_its_image_and_its_lock() -> None:
    """The chart's image tag defaults to its appVersion; that image installs the lock of the
    same project version (release_targets.py refuses a tag where any of them differ)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    (locked,) = [p["version"] for p in lock()["package"] if p["name"] == "ollama-fleet"]  # type: ignore[attr-defined]
    chart = yaml.safe_load((ROOT / "charts/ollama-fleet/Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts/ollama-fleet/values.yaml").read_text())
    assert values["image"]["tag"] == ""  # empty: the chart's appVersion
    assert project == locked == chart["appVersion"] == chart["version"]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        pytest.param(".ci/run", "--require-hashes -r requirements/test.txt", id="the suite"),
        pytest.param(".ci/run", "bash .ci/lock --check", id="the suite checks the lock"),
        pytest.param("Dockerfile", "--require-hashes", id="the image"),
        pytest.param("Dockerfile", "requirements/runtime.txt", id="the image's set"),
        pytest.param("README.md", "-r requirements/runtime.txt", id="the quick start"),
        pytest.param("README.md", "bash .ci/lock --upgrade", id="the refresh"),
    ],
)
def test_every_install_uses_the_lock(path: str, needle: str) -> None:
    assert needle in (ROOT / path).read_text()
