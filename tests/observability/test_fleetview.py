"""The /-/fleet report as tables: (snapshot, ledger, now) → pods, cells, states (pure)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from ollama_balancer.core.fleet import BackendState, FleetSnapshot, Health
from ollama_balancer.core.fleetstate import FleetState
from ollama_balancer.core.ledger import Ledger
from ollama_balancer.core.report import DOWN, PENDING, STALE, UP, build
from ollama_wire.backend import Backend
from ollama_wire.models import InstalledModel, ResidentModel
from ollama_wire.names import canonical

NOW = 1000.0
GB = 2**30


def inst(name: str, digest: str = "") -> InstalledModel:
    return InstalledModel(name, 4 * GB, digest or "d-" + name)


def res(name: str, digest: str = "", vram: int = 3 * GB) -> ResidentModel:
    return ResidentModel(name, 4 * GB, vram, digest or "d-" + name, "2030-01-01T00:00:00Z", 4096)


def pod(
    name: str,
    installed: list[InstalledModel] | None = None,
    resident: list[ResidentModel] | None = None,
    *,
    last_ok: float | None = NOW - 1,
    failures: int = 0,
    error: str = "",
) -> BackendState:
    return BackendState(
        backend=Backend(name, f"http://{name}:11434", slots=2, vram_bytes=24 * GB, node="n1"),
        installed=MappingProxyType({m.key: m for m in installed or []}),
        resident=MappingProxyType({m.key: m for m in resident or []}),
        version="0.33.0",
        last_ok=last_ok,
        last_poll=NOW - 0.5 if last_ok is not None or failures else None,
        failures=failures,
        last_error=error,
    )


def report(*pods: BackendState, ledger: Ledger | None = None, draining: bool = False) -> Any:
    snap = FleetSnapshot(backends=tuple(pods), taken_at=NOW)
    occupancy = (ledger or Ledger()).occupancy()
    fleet = FleetState.at(snap, occupancy, NOW, fail_threshold=3, stale_after=15.0)
    return build(fleet, draining=draining)


@pytest.mark.parametrize(
    ("state", "status", "routable"),
    [
        pytest.param(pod("a"), UP, True, id="answered recently: up"),
        pytest.param(pod("a", last_ok=None), PENDING, False, id="never answered: pending"),
        pytest.param(pod("a", last_ok=NOW - 60), STALE, False, id="last answer too old: stale"),
        pytest.param(
            pod("a", failures=3, error="refused"), DOWN, False, id="threshold failures: down"
        ),
        pytest.param(pod("a", failures=2), UP, True, id="below threshold: still up"),
    ],
)
def test_pod_status(state: BackendState, status: str, routable: bool) -> None:
    (p,) = report(state).pods
    assert (p.status, p.routable) == (status, routable)
    assert p.routable == (state.health(NOW, 3, 15.0) is Health.UP)


def test_cells_union_installed_resident_loading_and_inflight() -> None:
    ledger = Ledger()
    m, q, x = canonical("llama3.2"), canonical("qwen2.5:7b"), canonical("mistral")
    ledger.begin("a", m, cold=False, now=NOW - 2, request_id="r1")
    ledger.begin("a", m, cold=False, now=NOW - 2, request_id="r2")
    ledger.begin("a", q, cold=True, now=NOW - 3, request_id="r3")
    ledger.begin("b", x, cold=False, now=NOW, request_id="r4")  # not polled yet (a pull)
    ledger.penalise("b", NOW + 4)
    r = report(
        pod("a", [inst("llama3.2:latest"), inst("qwen2.5:7b")], [res("llama3.2:latest")]),
        pod("b", [inst("llama3.2:latest")]),
        ledger=ledger,
    )
    a, b = r.pods
    cells = {c.name: (c.state, c.inflight, c.loading_for) for c in a.models}
    assert cells == {
        "llama3.2:latest": ("resident", 2, None),
        "qwen2.5:7b": ("loading", 1, 3.0),
    }
    assert a.inflight == 3 and a.vram_used == 3 * GB and a.penalised_for == 0
    assert {c.name: c.state for c in b.models} == {
        "llama3.2:latest": "installed",
        "mistral:latest": "absent",
    }
    assert b.penalised_for == pytest.approx(4.0)
    doc = r.to_json()
    assert doc["inflight"] == 4
    assert doc["loading"] == [{"pod": "a", "model": "qwen2.5:7b", "seconds": 3.0}]
    assert doc["penalties"] == {"b": 4.0}
    models = {m["name"]: m for m in doc["models"]}
    assert models["llama3.2:latest"] == {
        "name": "llama3.2:latest",
        "installed_on": ["a", "b"],
        "resident_on": ["a"],
        "loading_on": [],
        "inflight": 2,
    }
    assert models["mistral:latest"]["inflight"] == 1
    pod_a = doc["pods"][0]
    assert (
        pod_a["name"] == "a" and pod_a["url"] == "http://a:11434" and pod_a["version"] == "0.33.0"
    )
    assert pod_a["last_poll_age"] == 0.5 and pod_a["status"] == "up"
    llama = next(c for c in pod_a["models"] if c["name"] == "llama3.2:latest")
    assert llama["size_vram"] == 3 * GB and llama["expires_at"] == "2030-01-01T00:00:00Z"


def test_resident_model_hides_a_finished_load() -> None:
    """Once /api/ps lists the model, the cell is resident even if the ledger still says loading."""
    ledger = Ledger()
    ledger.begin("a", canonical("llama3.2"), cold=True, now=NOW - 1, request_id="r1")
    (a,) = report(pod("a", [inst("llama3.2:latest")], [res("llama3.2:latest")]), ledger=ledger).pods
    (cell,) = a.models
    assert (cell.state, cell.resident, cell.loading) == ("resident", True, False)


def test_alias_served_by_the_runner_of_its_digest() -> None:
    """llama3.2:latest and llama3.2:3b share a manifest: one runner serves both names."""
    (a,) = report(
        pod(
            "a",
            [inst("llama3.2:latest", "sha"), inst("llama3.2:3b", "sha")],
            [res("llama3.2:3b", "sha")],
        )
    ).pods
    cells = {c.name: (c.state, c.runner) for c in a.models}
    assert cells == {
        "llama3.2:3b": ("resident", ""),
        "llama3.2:latest": ("resident", "llama3.2:3b"),
    }


def test_draining_and_empty_fleet() -> None:
    r = report(draining=True)
    assert r.to_json() == {
        "draining": True,
        "pods": [],
        "models": [],
        "inflight": 0,
        "loading": [],
        "penalties": {},
    }
