"""Layer rules (docs/architecture.md), checked by import-linter against the real import graph.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``.ci/run`` runs
``lint-imports`` too.  These tests also prove the contracts bite: a reversed import fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
SOURCE_ROOTS = ("kernel", "balancer", "emulator", "operator", "cli")
#: Folders the contracts read: the packages, and the tests (their own contract).
LINTED = (*SOURCE_ROOTS, "tests")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(root / r) for r in SOURCE_ROOTS))
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for r in LINTED:
        shutil.copytree(ROOT / r, tmp_path / r, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_contract_is_kept() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        pytest.param(
            "kernel/ollama_wire/names.py",
            "import ollama_balancer.core.fleet",
            "CLI above the applications",
            id="kernel imports the balancer",
        ),
        pytest.param(
            "operator/modelpool_operator/plan.py",
            "import ollama_balancer.core.routing",
            "CLI above the applications",
            id="operator imports the balancer",
        ),
        pytest.param(
            "emulator/ollama_emulator/clock.py",
            "import ollama_fleet.cli",
            "CLI above the applications",
            id="emulator imports the CLI",
        ),
        pytest.param(
            "balancer/ollama_balancer/core/routing.py",
            "import aiohttp",
            "Pure modules import no I/O library",
            id="pure routing imports aiohttp",
        ),
        pytest.param(
            "balancer/ollama_balancer/core/fleet.py",
            "import ollama_balancer.proxy",
            "No import circles",
            id="import circle",
        ),
        pytest.param(
            "emulator/ollama_emulator/state.py",
            "import typing\nif typing.TYPE_CHECKING:\n    import ollama_emulator.node",
            "No import circles",
            id="import circle under TYPE_CHECKING only",
        ),
        pytest.param(
            "tests/shared/test_pure.py",
            "from tests.balancer.test_routing import test_route",
            "Tests import no other test module",
            id="a test module imports another",
        ),
        pytest.param(
            "tests/faults/test_soak.py",
            "from tests.balancer.conftest import pytest_asyncio_loop_factories",
            "Tests import no other test module",
            id="a test module imports a conftest",
        ),
        pytest.param(
            "tests/harness/fleet.py",
            "import tests.balancer.test_proxy",
            "Tests import no other test module",
            id="the harness imports a test module",
        ),
    ],
)
def test_a_broken_rule_fails_the_lint(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def test_no_package_is_importable_as_operator() -> None:
    import operator

    assert operator.__file__ is not None
    assert "site-packages" not in operator.__file__ and "modelpool" not in operator.__file__
    for r in SOURCE_ROOTS:
        assert not (ROOT / r / "__init__.py").exists()
    assert not (ROOT / "operator" / "operator").exists()
