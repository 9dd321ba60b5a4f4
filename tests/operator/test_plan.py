"""Plan tables: every placement rule of plan.py is a named row here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from modelpool_operator.plan import plan
from modelpool_operator.spec import parse_pool_spec
from modelpool_operator.state import (
    Observation,
    Owned,
    PodState,
    Resident,
    merge_claims,
)
from ollama_wire.models import InstalledModel
from ollama_wire.names import canonical

GB = 1_000_000_000
A = canonical("a")  # registry.ollama.ai/library/a:latest
B = canonical("b")
C = canonical("c")


def pod(
    name: str,
    node: str = "",
    *,
    vram: int | None = 10 * GB,
    installed: Mapping[str, int] = {},
    resident: Mapping[str, int] = {},
    transient: Mapping[str, int] = {},
    error: str | None = None,
) -> PodState:
    """A pod; sizes in bytes. ``resident`` models are pinned, ``transient`` ones are not."""
    inst = {canonical(k): InstalledModel(name=f"{k}:latest", size=s) for k, s in installed.items()}
    res = {
        canonical(k): Resident(name=f"{k}:latest", size=s, pinned=True) for k, s in resident.items()
    }
    res |= {canonical(k): Resident(name=f"{k}:latest", size=s) for k, s in transient.items()}
    for k, r in res.items():
        inst.setdefault(k, InstalledModel(name=r.name, size=r.size))
    return PodState(
        name=name,
        url=f"http://{name}:11434",
        node=node,
        vram_bytes=vram,
        installed=inst,
        resident=res,
        error=error,
    )


def obs(*pods: PodState, gone: tuple[str, ...] = ()) -> Observation:
    return Observation(pods=pods, existing=frozenset(p.name for p in pods))


def spec(*models: dict[str, Any], prune: bool = False) -> Any:
    return parse_pool_spec(
        {"selector": {"matchLabels": {"app": "ollama"}}, "models": list(models), "prune": prune}
    )


def own(pod_name: str, model: str, *, loaded: bool = True, pulled: bool = False) -> Owned:
    return Owned(pod=pod_name, model=canonical(model), name=model, loaded=loaded, pulled=pulled)


@dataclass
class Case:
    spec: Any
    obs: Observation
    ledger: tuple[Owned, ...] = ()
    others: tuple[Owned, ...] = ()
    #: expected actions as "kind model@pod" strings (order-insensitive)
    actions: set[str] = field(default_factory=set)
    #: expected model -> pods targeted
    targets: dict[str, set[str]] | None = None
    #: expected problem reasons
    problems: set[str] = field(default_factory=set)
    #: expected ledger as "model@pod[:LP]" strings, None = don't check
    ledger_after: set[str] | None = None


def short(key: str) -> str:
    return key.rsplit("/", 1)[1].split(":")[0]


CASES = [
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            targets={"a": {"p0"}},
            ledger_after={"a@p0:L"},
        ),
        id="nothing to do",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            targets={"a": {"p0"}},
            ledger_after={"a@p0:L"},
        ),
        id="already pinned by someone: claim it, no load",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1, "pull": "loaded"}),
            obs=obs(pod("p0", installed={"b": GB}), pod("p1", installed={"a": 2 * GB})),
            actions={"load a@p1"},
            targets={"a": {"p1"}},
        ),
        id="installed beats none",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1, "pull": "loaded"}),
            obs=obs(pod("p0", installed={"a": GB}), pod("p1", transient={"a": GB})),
            actions={"load a@p1"},
            targets={"a": {"p1"}},
        ),
        id="resident beats installed",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 2, "pull": "loaded"}),
            obs=obs(pod("p0"), pod("p1"), pod("p2", installed={"a": GB})),
            actions={"load a@p2", "pull a@p0", "load a@p0"},
            targets={"a": {"p0", "p2"}},
            ledger_after={"a@p0:LP", "a@p2:L"},
        ),
        id="pull then load, size known from another pod",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0"), pod("p1")),
            actions={"pull a@p0", "pull a@p1"},
            targets={"a": {"p0"}},
            ledger_after={"a@p0:P", "a@p1:P"},
        ),
        id="size unknown: pull everywhere first, load next round",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 3}),
            obs=obs(
                pod("p0", resident={"a": GB}),
                pod("p1", installed={"a": GB}),
                pod("p2", installed={"a": GB}),
            ),
            ledger=(own("p0", "a"),),
            actions={"load a@p1", "load a@p2"},
            targets={"a": {"p0", "p1", "p2"}},
        ),
        id="replicas up",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(
                pod("p0", resident={"a": GB}),
                pod("p1", resident={"a": GB}),
                pod("p2", resident={"a": GB}),
            ),
            ledger=(own("p0", "a"), own("p1", "a"), own("p2", "a")),
            actions={"unload a@p1", "unload a@p2"},
            targets={"a": {"p0"}},
            ledger_after={"a@p0:L"},
        ),
        id="replicas down unloads only the surplus",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 0}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            actions={"unload a@p0"},
            targets={"a": set()},
        ),
        id="replicas 0 = pulled only",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": "all"}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB}), pod("p2")),
            actions={"load a@p1", "pull a@p2", "load a@p2"},
            targets={"a": {"p0", "p1", "p2"}},
        ),
        id="all",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 2}),
            obs=obs(
                pod("p0", vram=10 * GB, resident={"b": 8 * GB}, installed={"a": 4 * GB}),
                pod("p1", vram=10 * GB, resident={"c": 7 * GB}, installed={"a": 4 * GB}),
            ),
            problems={"InsufficientVRAM"},
            targets={"a": set()},
        ),
        id="VRAM full: Degraded, nothing evicted",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 2}),
            obs=obs(
                pod("p0", vram=10 * GB, resident={"b": 8 * GB}, installed={"a": 4 * GB}),
                pod("p1", vram=10 * GB, transient={"c": 7 * GB}, installed={"a": 4 * GB}),
            ),
            actions={"load a@p1"},
            problems={"InsufficientVRAM"},
            targets={"a": {"p1"}},
        ),
        id="transient residents do not block (Ollama evicts them)",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}, {"name": "b", "replicas": 1}),
            obs=obs(pod("p0", vram=10 * GB, installed={"a": 6 * GB, "b": 6 * GB})),
            actions={"load a@p0"},
            problems={"InsufficientVRAM"},
            targets={"a": {"p0"}, "b": set()},
        ),
        id="two models never exceed one pod's capacity",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p1", installed={"a": GB}), pod("p2", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            actions={"load a@p1"},
            targets={"a": {"p1"}},
            ledger_after={"a@p1:L"},
        ),
        id="pod gone: load moves elsewhere, claim forgotten",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(
                pod("p0", error="connection refused", resident={}), pod("p1", installed={"a": GB})
            ),
            ledger=(own("p0", "a"),),
            actions={"load a@p1"},
            problems={"PodUnreachable"},
            targets={"a": {"p1"}},
            ledger_after={"a@p0:L", "a@p1:L"},
        ),
        id="pod not answering: Degraded, load elsewhere, its claim kept",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", installed={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p1", "a"),),
            actions={"load a@p1"},
            targets={"a": {"p1"}},
            ledger_after={"a@p1:L"},
        ),
        id="evicted claim reloads on the same pod",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", installed={"a": GB}), pod("p1", resident={"a": GB})),
            ledger=(own("p1", "a"),),
            targets={"a": {"p1"}},
        ),
        id="stable: a satisfied replica is not moved to a 'better' pod",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", transient={"a": GB})),
            ledger=(own("p0", "a"),),
            actions={"load a@p0"},
            targets={"a": {"p0"}},
        ),
        id="client overrode keep_alive: re-pin",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 2}),
            obs=obs(
                pod("p0", "n1", installed={"a": GB}),
                pod("p1", "n1", installed={"a": GB}),
                pod("p2", "n2"),
            ),
            actions={"load a@p0", "pull a@p2", "load a@p2"},
            targets={"a": {"p0", "p2"}},
        ),
        id="spread across nodes beats reuse",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 2}),
            obs=obs(
                pod("p0", "n1", resident={"a": GB}),
                pod("p1", "n1", resident={"a": GB}),
                pod("p2", "n2", resident={"a": GB}),
            ),
            ledger=(own("p0", "a"), own("p1", "a"), own("p2", "a")),
            actions={"unload a@p1"},
            targets={"a": {"p0", "p2"}},
        ),
        id="scale down keeps the spread",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "b", "replicas": 1}, prune=True),
            obs=obs(
                pod("p0", resident={"a": GB, "b": GB}), pod("p1", installed={"a": GB, "c": GB})
            ),
            ledger=(own("p0", "a", pulled=True), own("p1", "a", loaded=False, pulled=True)),
            actions={"unload a@p0", "delete a@p0", "delete a@p1", "pull b@p1"},
            targets={"b": {"p0"}},
            ledger_after={"b@p0:L", "b@p1:P"},
        ),
        id="prune unloads and deletes only what the pool put there",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "b", "replicas": 1}, prune=False),
            obs=obs(pod("p0", resident={"a": GB, "b": GB})),
            ledger=(own("p0", "a", pulled=True),),
            targets={"b": {"p0"}},
            ledger_after={"b@p0:L"},
        ),
        id="no prune: unlisted models are disowned, not touched",
    ),
    pytest.param(
        Case(
            spec=spec(prune=True),
            obs=obs(pod("p0", resident={"a": GB})),
            ledger=(own("p0", "a", pulled=True),),
            others=(own("p0", "a"),),
            ledger_after=set(),
        ),
        id="two pools: prune spares a model the other pool claims",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "b", "replicas": 1}),
            obs=obs(pod("p0", vram=10 * GB, resident={"a": 6 * GB}, installed={"b": 6 * GB})),
            others=(own("p0", "a"),),
            problems={"InsufficientVRAM"},
            targets={"b": set()},
        ),
        id="two pools: the later pool is Degraded, the other's model stays",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", resident={"a": 6 * GB}), pod("p1", installed={"a": 6 * GB})),
            others=(own("p0", "a"),),
            targets={"a": {"p0"}},
            ledger_after={"a@p0:L"},
        ),
        id="two pools want the same model: they share the copy",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 0}),
            obs=obs(pod("p0", resident={"a": GB})),
            ledger=(own("p0", "a"),),
            others=(own("p0", "a"),),
            targets={"a": set()},
            ledger_after=set(),
        ),
        id="two pools: scale-down leaves the copy the other pool claims",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "b", "replicas": 1}),
            obs=obs(
                pod("p0", vram=10 * GB, installed={"a": 6 * GB, "b": 5 * GB}),
                pod("p1", vram=4 * GB, installed={"b": 5 * GB}),
            ),
            others=(own("p0", "a"),),
            problems={"InsufficientVRAM"},
            targets={"b": set()},
        ),
        id="two pools: an evicted claim of the other pool keeps its room",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", vram=4 * GB, resident={"a": 5 * GB})),
            others=(own("p0", "a"),),
            targets={"a": {"p0"}},
            ledger_after={"a@p0:L"},
        ),
        id="a pinned copy on an over-full pod still counts (it costs nothing more)",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 3}),
            obs=obs(pod("p0", installed={"a": GB}), pod("p1", installed={"a": GB})),
            actions={"load a@p0", "load a@p1"},
            problems={"NotEnoughPods"},
        ),
        id="more replicas than pods",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_plan(case: Case) -> None:
    result = plan(case.spec, case.obs, case.ledger, merge_claims([case.others]))
    got = {f"{a.kind} {short(a.model)}@{a.pod}" for a in result.actions}
    assert got == case.actions
    assert {p.reason for p in result.problems} == case.problems
    if case.targets is not None:
        assert {short(k): set(v) for k, v in result.targets.items()} == case.targets
    if case.ledger_after is not None:
        flags = lambda o: ("L" if o.loaded else "") + ("P" if o.pulled else "")  # noqa: E731
        assert {f"{short(o.model)}@{o.pod}:{flags(o)}" for o in result.ledger} == case.ledger_after


@pytest.mark.parametrize("case", CASES)
def test_plan_converges(case: Case) -> None:
    """Applying a plan's loads/unloads and re-planning yields no further load/unload: no thrash."""
    first = plan(case.spec, case.obs, case.ledger, merge_claims([case.others]))
    pods = []
    for p in case.obs.pods:
        installed = dict(p.installed)
        resident = dict(p.resident)
        for a in first.actions:
            if a.pod != p.name:
                continue
            if a.kind == "unload":
                resident.pop(a.model, None)
            elif a.kind == "delete":
                installed.pop(a.model, None)
            elif a.kind == "pull":
                installed[a.model] = InstalledModel(name=a.name, size=GB)
            elif a.kind == "load":
                size = (
                    resident.get(a.model) or installed.get(a.model) or InstalledModel("", GB)
                ).size
                resident[a.model] = Resident(name=a.name, size=size, pinned=True)
        pods.append(PodState(p.name, p.url, p.node, p.vram_bytes, installed, resident, p.error))
    second = plan(
        case.spec,
        Observation(tuple(pods), case.obs.existing),
        first.ledger,
        merge_claims([case.others]),
    )
    moves = {a.describe() for a in second.actions if a.kind in ("unload", "delete")}
    assert not moves
    # once sizes are known, the only follow-up is loading what was pulled
    assert all(a.kind == "load" for a in second.actions), [a.describe() for a in second.actions]
    again = plan(
        case.spec,
        Observation(tuple(pods), case.obs.existing),
        first.ledger,
        merge_claims([case.others]),
    )
    assert again == second  # deterministic


def test_pulled_entry_kept_when_pod_unreachable_for_prune() -> None:
    result = plan(
        spec(prune=True),
        obs(pod("p0", error="timeout", installed={"a": GB})),
        (own("p0", "a", pulled=True),),
    )
    assert result.actions == ()
    assert [o.pod for o in result.ledger] == ["p0"]
    assert {p.reason for p in result.problems} == {"PodUnreachable"}
    assert "p0" in result.problems[0].message


@pytest.mark.parametrize(
    ("context_length", "num_ctx", "actions"),
    [
        pytest.param(4096, 8192, {"load a@p0"}, id="runner's num_ctx differs: reload it now"),
        pytest.param(8192, 8192, set(), id="runner's num_ctx matches: nothing"),
        pytest.param(4096, None, set(), id="no num_ctx asked: any runner will do"),
        pytest.param(0, 8192, set(), id="context unknown: leave it"),
    ],
)
def test_num_ctx_mismatch_reloads(
    context_length: int, num_ctx: int | None, actions: set[str]
) -> None:
    p0 = pod("p0", resident={"a": GB})
    p0 = replace(p0, resident={A: replace(p0.resident[A], context_length=context_length)})
    model: dict[str, Any] = {"name": "a", "replicas": 1}
    if num_ctx is not None:
        model["options"] = {"num_ctx": num_ctx}
    result = plan(spec(model), obs(p0), (own("p0", "a"),), merge_claims([()]))
    assert {f"{a.kind} {short(a.model)}@{a.pod}" for a in result.actions} == actions
    assert {short(k): set(v) for k, v in result.targets.items()} == {"a": {"p0"}}
