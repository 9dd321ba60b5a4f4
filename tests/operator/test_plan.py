"""Plan tables: every placement rule of plan.py is a named row here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from modelpool_operator.autoscale import Scaled
from modelpool_operator.plan import anticipate, plan, record, revert, serves
from modelpool_operator.spec import parse_pool_spec
from modelpool_operator.state import (
    Action,
    ActionKind,
    Observation,
    Owned,
    PodState,
    Priority,
    Problem,
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
    #: sizes from the registry's manifests, by short name
    sizes: dict[str, int] = field(default_factory=dict)
    #: models the registry refused for good, by short name -> reason
    blocked: dict[str, str] = field(default_factory=dict)
    #: autoscaled models' decisions, by short name
    scaled: dict[str, Scaled] = field(default_factory=dict)
    #: expected substrings of the problems' messages
    messages: tuple[str, ...] = ()

    def run(self, obs: Observation | None = None, ledger: tuple[Owned, ...] | None = None) -> Any:
        return plan(
            self.spec,
            obs or self.obs,
            self.ledger if ledger is None else ledger,
            merge_claims([self.others]),
            sizes={canonical(k): v for k, v in self.sizes.items()},
            blocked={
                canonical(k): Problem(r, f"{k}: refused", canonical(k))
                for k, r in self.blocked.items()
            },
            scaled={canonical(k): v for k, v in self.scaled.items()},
            release_keep_alive=120,
        )


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
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(pod("p0", vram=24 * GB), pod("p1", vram=16 * GB)),
            sizes={"a": 40 * GB},
            problems={"ModelTooLarge"},
            targets={"a": set()},
            ledger_after=set(),
        ),
        id="bigger than every pod (registry size): refused, not even pulled (pull: all)",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1, "pull": "loaded"}),
            obs=obs(pod("p0", vram=24 * GB), pod("p1", vram=16 * GB)),
            sizes={"a": 40 * GB},
            problems={"ModelTooLarge"},
            targets={"a": set()},
        ),
        id="bigger than every pod, pull: loaded",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}),
            obs=obs(
                pod("p0", vram=10 * GB, resident={"b": 8 * GB}),
                pod("p1", vram=10 * GB),
            ),
            sizes={"a": 6 * GB},
            actions={"pull a@p1", "load a@p1", "pull a@p0"},
            targets={"a": {"p1"}},
        ),
        id="registry size places before the download; pull: all still fills p0's disk",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1}, {"name": "b", "replicas": 1}),
            obs=obs(pod("p0", installed={"b": GB})),
            blocked={"a": "ModelNotFound"},
            actions={"load b@p0"},
            problems={"ModelNotFound"},
            targets={"a": set(), "b": {"p0"}},
        ),
        id="a verdict blocks its model only",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1, "pull": "loaded"}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a", pulled=True), own("p1", "a", loaded=False, pulled=True)),
            actions={"delete a@p1"},
            targets={"a": {"p0"}},
            ledger_after={"a@p0:LP"},
        ),
        id="pull: loaded: a copy the pool pulled where it is not loaded goes",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "replicas": 1, "pull": "loaded"}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            targets={"a": {"p0"}},
        ),
        id="pull: loaded: a copy the pool did not pull stays",
    ),
]


AUTO = {"minReplicas": 1, "maxReplicas": 4, "targetRequests": 2}
ZERO = {"minReplicas": 0, "maxReplicas": 2}
CASES += [
    pytest.param(
        Case(
            spec=spec({"name": "a", **AUTO}),
            obs=obs(
                pod("p0", "n0", resident={"a": GB}),
                pod("p1", "n1", installed={"a": GB}),
                pod("p2", "n0", installed={"a": GB}),
                pod("p3", "n1", installed={"a": GB}),
            ),
            ledger=(own("p0", "a"),),
            scaled={"a": Scaled(3, 5.0, 2)},
            actions={"load a@p1", "load a@p2"},
            targets={"a": {"p0", "p1", "p2"}},
        ),
        id="autoscaled: up to the decided count, spread over nodes",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **AUTO}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            actions=set(),
            targets={"a": {"p0"}},
        ),
        id="autoscaled without a decision yet: minReplicas",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **AUTO}),
            obs=obs(
                pod("p0", "n0", resident={"a": GB}),
                pod("p1", "n1", resident={"a": GB}),
                pod("p2", "n0", resident={"a": GB}),
            ),
            ledger=(own("p0", "a"), own("p1", "a"), own("p2", "a")),
            scaled={"a": Scaled(1, 1.0, 2)},
            actions={"unload a@p1", "unload a@p2"},
            targets={"a": {"p0"}},
        ),
        id="autoscaled down to one: surplus copies unloaded",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **ZERO}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", installed={"a": GB})),
            ledger=(own("p0", "a"),),
            scaled={"a": Scaled(0, 0.0, 1)},
            actions={"load a@p0"},  # the release: a finite keep_alive, not an unload
            targets={"a": set()},
            ledger_after=set(),
        ),
        id="autoscaled to zero: the last copy's pin is released",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **ZERO}),
            obs=obs(pod("p0", resident={"a": GB})),
            ledger=(own("p0", "a"),),
            others=(own("p0", "a"),),
            scaled={"a": Scaled(0, 0.0, 1)},
            actions=set(),
            ledger_after=set(),
        ),
        id="autoscaled to zero: a copy another pool pins stays pinned",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **ZERO}),
            obs=obs(pod("p0", transient={"a": GB}), pod("p1", installed={"a": GB})),
            scaled={"a": Scaled(1, 0.5, 1)},
            actions={"load a@p0"},
            targets={"a": {"p0"}},
        ),
        id="from zero: the copy a request loaded is pinned again where it is",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", **AUTO}),
            obs=obs(
                pod("p0", resident={"a": 4 * GB}),
                pod("p1", vram=5 * GB, installed={"a": 4 * GB}),
                pod("p2", vram=5 * GB, resident={"b": 2 * GB}, installed={"a": 4 * GB}),
            ),
            ledger=(own("p0", "a"),),
            scaled={"a": Scaled(3, 7.0, 2)},
            actions={"load a@p1"},
            targets={"a": {"p0", "p1"}},
            problems={"InsufficientVRAM"},
            messages=(
                "a: 2/3 replicas placed for a demand of 7 (2 per copy): 3 requests beyond",
                "free: p2 2.8 GiB",
            ),
        ),
        id="autoscaled at the VRAM limit: unmet demand reported, nothing evicted",
    ),
    pytest.param(
        Case(
            spec=spec({"name": "a", "pull": "loaded", **AUTO}),
            obs=obs(pod("p0", resident={"a": GB}), pod("p1", resident={"a": GB})),
            ledger=(own("p0", "a", pulled=True), own("p1", "a", pulled=True)),
            scaled={"a": Scaled(1, 0.0, 2)},
            actions={"unload a@p1"},
            ledger_after={"a@p0:LP", "a@p1:P"},
        ),
        id="autoscaled, pull: loaded: the disk copy stays for the next scale-up",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_plan(case: Case) -> None:
    result = case.run()
    got = {f"{a.kind} {short(a.model)}@{a.pod}" for a in result.actions}
    assert got == case.actions
    assert {p.reason for p in result.problems} == case.problems
    text = "; ".join(p.message for p in result.problems)
    assert all(m in text for m in case.messages), text
    if case.targets is not None:
        assert {short(k): set(v) for k, v in result.targets.items()} == case.targets
    if case.ledger_after is not None:
        flags = lambda o: ("L" if o.loaded else "") + ("P" if o.pulled else "")  # noqa: E731
        assert {f"{short(o.model)}@{o.pod}:{flags(o)}" for o in result.ledger} == case.ledger_after


@pytest.mark.parametrize("case", CASES)
def test_plan_converges(case: Case) -> None:
    """Applying a plan's loads/unloads and re-planning yields no further load/unload: no thrash."""
    first = case.run()
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
    second = case.run(Observation(tuple(pods), case.obs.existing), first.ledger)
    moves = {a.describe() for a in second.actions if a.kind in ("unload", "delete")}
    assert not moves
    # once sizes are known, the only follow-up is loading what was pulled
    assert all(a.kind == "load" for a in second.actions), [a.describe() for a in second.actions]
    again = case.run(Observation(tuple(pods), case.obs.existing), first.ledger)
    assert again == second  # deterministic


def test_release_keeps_the_copy_with_a_finite_keep_alive() -> None:
    """Scale to zero loads the last copy again with the release keep_alive: Ollama unloads
    it when idle, never under a running request; the plan's view counts its room free."""
    s = spec({"name": "a", **ZERO})
    o = obs(pod("p0", vram=2 * GB, resident={"a": GB}))
    result = plan(s, o, (own("p0", "a"),), scaled={A: Scaled(0, 0.0, 1)}, release_keep_alive=120)
    (action,) = result.actions
    assert (action.kind, action.keep_alive, action.priority) == (
        ActionKind.LOAD,
        120,
        Priority.FREE,
    )
    assert action.reason.startswith("release: scaled to zero")
    after = anticipate(o, [action])
    assert after.pods[0].resident[A].pinned is False


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


def actions_of(result: Any) -> dict[str, tuple[str, int]]:
    return {f"{a.kind} {short(a.model)}@{a.pod}": (a.reason, a.priority) for a in result.actions}


@pytest.mark.parametrize(
    ("ledger", "residents", "expected"),
    [
        pytest.param(
            (own("gone", "a"),), {}, {"load a@p0": ("replace lost replica", Priority.REPLACE)},
            id="pod gone: its replacement goes first",
        ),
        pytest.param(
            (own("p0", "a"),), {}, {"load a@p0": ("reload after eviction", Priority.REPLACE)},
            id="evicted: reloading it is a replacement too",
        ),
        pytest.param(
            (), {}, {"load a@p0": ("load", Priority.LOAD)},
            id="a new replica is an ordinary load",
        ),
        pytest.param(
            (own("p0", "a"),), {"a": Resident("a:latest", GB, pinned=False)},
            {"load a@p0": ("re-pin", Priority.REPAIR)},
            id="a replica whose pin a client replaced is repaired",
        ),
    ],
)  # fmt: skip
def test_priorities(
    ledger: tuple[Owned, ...], residents: dict[str, Resident], expected: dict[str, Any]
) -> None:
    p0 = pod("p0", installed={"a": GB})
    p0 = replace(p0, resident={canonical(k): r for k, r in residents.items()})
    result = plan(spec({"name": "a", "replicas": 1}), obs(p0), ledger)
    assert actions_of(result) == expected


def test_pull_priorities_follow_what_they_are_for() -> None:
    result = plan(
        spec({"name": "a", "replicas": 1}, {"name": "b", "replicas": 0}),
        obs(pod("p0"), pod("p1", installed={"a": GB})),
        (own("gone", "a"),),
        sizes={A: GB, B: GB},
    )
    got = actions_of(result)
    assert got["load a@p1"][1] == Priority.REPLACE
    assert got["pull a@p0"] == ("pull: all", Priority.DISK)
    assert got["pull b@p0"][1] == got["pull b@p1"][1] == Priority.DISK
    # a pull a replacement waits for carries the replacement's priority
    moved = plan(
        spec({"name": "a", "replicas": 1}), obs(pod("p0")), (own("gone", "a"),), sizes={A: GB}
    )
    assert actions_of(moved)["pull a@p0"] == ("pull for load", Priority.REPLACE)


def test_a_pull_of_unknown_size_carries_its_room() -> None:
    result = plan(
        spec({"name": "a", "replicas": 1, "pull": "loaded"}),
        obs(pod("p0", vram=10 * GB, resident={"b": 4 * GB})),
    )
    [pull] = result.actions
    assert (pull.kind, pull.max_bytes) == ("pull", 6 * GB)
    known = plan(spec({"name": "a", "pull": "loaded"}), obs(pod("p0")), sizes={A: GB})
    assert all(a.max_bytes is None for a in known.actions)


def test_planning_on_the_anticipated_view_asks_nothing_twice() -> None:
    """While a pull and the load waiting for it run, a new pass plans neither again and
    keeps their room: the second model goes to the other pod."""
    a = {"name": "a", "replicas": 1, "pull": "loaded"}
    s = spec(a, {"name": "b", "replicas": 1, "pull": "loaded"})
    o = obs(pod("p0", vram=10 * GB), pod("p1", vram=10 * GB))
    first = plan(spec(a), o, sizes={A: 6 * GB})
    pending = list(first.actions)
    assert {a.kind.value for a in pending} == {"pull", "load"}
    view = anticipate(o, pending, {A: 6 * GB})
    p = view.pod(pending[0].pod)
    assert p is not None and A in p.installed and p.resident[A].pinned
    second = plan(s, view, first.ledger, sizes={A: 6 * GB, B: 6 * GB})
    got = {f"{a.kind} {short(a.model)}@{a.pod}" for a in second.actions}
    other = "p1" if pending[0].pod == "p0" else "p0"
    assert f"pull b@{other}" in got and f"load b@{other}" in got
    assert not any(a.model == A and a.kind in ("pull", "load") for a in second.actions)


def test_record_and_revert_keep_the_ledger_true() -> None:
    load = Action(ActionKind.LOAD, "p0", "u", A, "a", "load", embedding=True)
    pull = Action(ActionKind.PULL, "p0", "u", A, "a", "pull")
    after = record(record((), pull), load)
    assert after == (Owned("p0", A, "a", loaded=True, pulled=True, embedding=True),)
    unload = Action(ActionKind.UNLOAD, "p0", "u", A, "a", "prune")
    delete = Action(ActionKind.DELETE, "p0", "u", A, "a", "prune")
    assert record(record(after, unload), delete) == ()
    # a planned claim whose action has not succeeded yet is not (yet) owned
    assert revert((), after, [load]) == (Owned("p0", A, "a", pulled=True, embedding=True),)
    assert revert((), after, [load, pull]) == ()


@pytest.mark.parametrize(
    ("model", "resident", "expected"),
    [
        pytest.param({"name": "a"}, Resident("a", GB, pinned=True), True, id="pinned"),
        pytest.param({"name": "a"}, Resident("a", GB), False, id="pin replaced"),
        pytest.param({"name": "a", "keepAlive": "1h"}, Resident("a", GB), True, id="1h by choice"),
        pytest.param({"name": "a", "options": {"num_ctx": 4096}},
                     Resident("a", GB, pinned=True, context_length=2048), False, id="num_ctx"),
        pytest.param({"name": "a"}, None, False, id="gone"),
    ],
)  # fmt: skip
def test_serves(model: dict[str, Any], resident: Resident | None, expected: bool) -> None:
    assert serves(spec(model).models[0], resident) is expected
