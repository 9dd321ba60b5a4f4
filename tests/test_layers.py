"""Layer rules (DESIGN.md §3): pure modules stay pure; nothing imports the operator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BALANCER = ROOT / "balancer" / "ollama_balancer"
OPERATOR = ROOT / "operator" / "modelpool_operator"

#: Decisions and data, no I/O: routing tables and reconcile plans are tested as pure functions.
PURE = [
    BALANCER / "names.py",
    BALANCER / "durations.py",
    BALANCER / "errors.py",
    BALANCER / "quantity.py",
    BALANCER / "backends.py",
    BALANCER / "fleet.py",
    BALANCER / "ledger.py",
    BALANCER / "routing.py",
    BALANCER / "requests.py",
    BALANCER / "views.py",
    BALANCER / "fleetview.py",
    BALANCER / "discovery" / "pods.py",
    OPERATOR / "spec.py",
    OPERATOR / "state.py",
    OPERATOR / "plan.py",
    OPERATOR / "status.py",
]
IMPURE = {"aiohttp", "kopf", "kubernetes", "structlog", "prometheus_client", "requests", "urllib3"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = {name for name in imports(path) if name.split(".")[0] in IMPURE}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_nothing_imports_the_operator() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in BALANCER.rglob("*.py")
        if any(name.split(".")[0] == "modelpool_operator" for name in imports(p))
    ]
    assert not offenders


def test_no_package_is_importable_as_operator() -> None:
    import operator

    assert operator.__file__ is not None
    assert "site-packages" not in operator.__file__ and "modelpool" not in operator.__file__
    assert not (ROOT / "operator" / "__init__.py").exists()
