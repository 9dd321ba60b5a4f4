"""Reconcile plan: Observation + spec + ledgers -> actions (pure, table-tested).

Shaped like KubeAI's ``calculatePodPlan``: nothing here talks to a server, so
every placement rule is a row in ``tests/operator/test_plan.py``.

Placement rules, in the order they apply:

1. **Stable.** A replica this pool already pinned, on a pod that still answers
   and still has the model resident, stays where it is.  Surplus replicas are
   released from the most crowded node first.
2. **Spread, then reuse.** New replicas go to the Kubernetes node holding the
   fewest copies so far; among equals, a pod that already has the model
   resident beats one where this pool pinned it before (evicted since), which
   beats one with it on disk, which beats a pull; then most free VRAM; then name.
3. **Fit.** Only *pinned* memory counts as used: residents with a forever
   ``expires_at``, and anything any pool claims on that pod (resident or about
   to be reloaded).  Transient residents loaded by clients are Ollama's to evict
   (it picks the shortest keep-alive first, docs/ollama.md §5.5), so they never
   block a placement.  A replica that does not fit is *not* placed: the pool
   reports Degraded instead of evicting anything, so there is nothing to thrash.
4. **Two pools.** Other pools' claims are occupied memory and untouchable; the
   desired set on a pod is the union of all pools' claims.  A pool only
   unloads or deletes what its own ledger says it put there, and never while
   another pool claims the same model on the same pod.
5. **Size before download.** A model's size comes from a copy on some pod, else
   from the registry's manifest (``sizes``).  A model bigger than every selected
   pod's VRAM is refused outright (``ModelTooLarge``): nothing is pulled.  When
   no size is known at all the pull carries ``max_bytes`` (the room it was
   placed in), so it can be abandoned as soon as Ollama's progress tells the size.
6. **Verdicts stick.** A model the registry refused for good (``blocked``: not
   found, invalid name, unauthorized) is neither pulled nor loaded until the
   spec changes; the refusal is the pool's problem.
7. **Priorities.** Every action carries a :class:`~.state.Priority`: replacing a
   lost replica first, disk-only pulls last (see :mod:`.lanes`).
8. **pull: loaded** keeps a model on disk only where the pool keeps it loaded:
   a copy the pool pulled on a pod where it is not placed is deleted again
   (autoscaled models excepted: their copies come and go, the disk copy stays for the
   next scale-up or cold load).
9. **Autoscaled models** get the count their demand decided (``scaled``), placed by the
   rules above: a copy that does not fit is reported with the demand it leaves unmet,
   never made room for.  Scaling down to zero releases the last copies' pin instead of
   unloading them: they are loaded again with a finite keep_alive
   (``release_keep_alive``), so Ollama unloads them once idle, never under a running
   request, and the next request finds them warm until then.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ollama_wire.models import InstalledModel

from .autoscale import Scaled
from .spec import ModelSpec, PoolSpec
from .state import (
    Action,
    ActionKind,
    Observation,
    Owned,
    PodState,
    Priority,
    Problem,
    Resident,
)

__all__ = [
    "Plan",
    "anticipate",
    "format_bytes",
    "model_size",
    "plan",
    "record",
    "revert",
    "serves",
    "settle",
]


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    #: the ledger as it will be once every action succeeded
    ledger: tuple[Owned, ...]
    #: model key -> pods chosen to keep it loaded (placed or pending)
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: model key -> replicas wanted right now (``all`` resolved)
    desired: Mapping[str, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions


def format_bytes(n: float) -> str:
    if math.isinf(n):
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def model_size(obs: Observation, key: str, registry: Mapping[str, int] | None = None) -> int | None:
    """Best known memory footprint of ``key``.

    A resident copy's ``/api/ps`` size includes the KV cache, so it beats the
    file size from ``/api/tags``; using the larger keeps placements honest (a
    plan that under-counts would have Ollama evict a pinned model, and the
    next resync would reload it: thrash).  Without any copy, the registry's
    manifest (the sum of its layers, which is what ``/api/tags`` will say).
    """
    sizes = [p.resident[key].size for p in obs.pods if key in p.resident]
    sizes += [p.installed[key].size for p in obs.pods if key in p.installed]
    sizes = [s for s in sizes if s > 0]
    if sizes:
        return max(sizes)
    known = (registry or {}).get(key)
    return known if known else None


def _is_embedding(m: ModelSpec, obs: Observation) -> bool:
    if m.embedding is not None:
        return m.embedding
    for p in obs.pods:
        inst = p.installed.get(m.key)
        if inst is not None and inst.capabilities:
            return "embedding" in inst.capabilities and "completion" not in inst.capabilities
    return False


class _Planner:
    def __init__(
        self,
        spec: PoolSpec,
        obs: Observation,
        ledger: Iterable[Owned],
        others: Mapping[tuple[str, str], Owned],
        sizes: Mapping[str, int],
        blocked: Mapping[str, Problem],
        scaled: Mapping[str, Scaled] | None = None,
        release_keep_alive: float = 300.0,
    ) -> None:
        self.spec = spec
        self.scaled = scaled or {}
        self.release_keep_alive = release_keep_alive
        self.obs = obs
        self.others = others
        self.sizes = sizes
        self.blocked = blocked
        ledger = tuple(ledger)
        # Replicas the pool had pinned, gone or not: new placements up to that count
        # are replacements, which go first of all on their pods.
        self.had: Counter[str] = Counter(o.model for o in ledger if o.loaded)
        # Claims on pods that no longer exist are forgotten: the pod took its memory with it.
        self.prev: dict[tuple[str, str], Owned] = {
            (o.pod, o.model): o for o in ledger if o.pod in obs.existing
        }
        self.mine: dict[tuple[str, str], Owned] = dict(self.prev)
        self.avail = [p for p in obs.pods if p.available]
        self.actions: list[Action] = []
        self.problems: list[Problem] = []
        self.used = {p.name: self._pinned_bytes(p) for p in self.avail}

    # -- memory accounting ------------------------------------------------
    def _capacity(self, p: PodState) -> float:
        cap = p.vram_bytes if p.vram_bytes is not None else self.spec.default_vram_bytes
        return math.inf if cap is None else float(cap)

    def _claimed(self, pod: str, key: str, *, by_me: bool = True) -> bool:
        other = self.others.get((pod, key))
        if other is not None and other.loaded:
            return True
        mine = self.prev.get((pod, key))
        return by_me and mine is not None and mine.loaded

    def _pinned_bytes(self, p: PodState) -> int:
        total = sum(r.size for k, r in p.resident.items() if r.pinned or self._claimed(p.name, k))
        # Another pool's claim that Ollama evicted will be reloaded by that pool:
        # keep its room free rather than race it.
        for (pod, key), o in self.others.items():
            if pod == p.name and o.loaded and key not in p.resident:
                total += model_size(self.obs, key, self.sizes) or 0
        return total

    def _counted(self, p: PodState, key: str) -> bool:
        r = p.resident.get(key)
        return r is not None and (r.pinned or self._claimed(p.name, key))

    def free(self, p: PodState) -> float:
        return self._capacity(p) - self.used[p.name]

    # -- ledger and actions -------------------------------------------------
    def _set(
        self,
        pod: str,
        m_key: str,
        name: str,
        *,
        loaded: bool | None = None,
        pulled: bool | None = None,
        embedding: bool | None = None,
    ) -> None:
        cur = self.mine.get((pod, m_key)) or Owned(pod=pod, model=m_key, name=name)
        new = replace(
            cur,
            loaded=cur.loaded if loaded is None else loaded,
            pulled=cur.pulled if pulled is None else pulled,
            embedding=cur.embedding if embedding is None else embedding,
        )
        if new.empty:
            self.mine.pop((pod, m_key), None)
        else:
            self.mine[(pod, m_key)] = new

    def _act(
        self,
        kind: ActionKind,
        p: PodState,
        key: str,
        name: str,
        reason: str,
        *,
        load: ModelSpec | None = None,
        embedding: bool = False,
        priority: Priority = Priority.FREE,
        max_bytes: int | None = None,
    ) -> None:
        self.actions.append(
            Action(
                kind=kind,
                pod=p.name,
                url=p.url,
                model=key,
                name=name,
                reason=reason,
                keep_alive=load.keep_alive_wire if load else None,
                options=load.options if load else (),
                embedding=embedding,
                priority=priority,
                max_bytes=max_bytes,
            )
        )

    def _pod(self, name: str) -> PodState | None:
        for p in self.avail:
            if p.name == name:
                return p
        return None

    # -- phases ---------------------------------------------------------------
    def release_unlisted(self) -> None:
        for (pod_name, key), o in sorted(self.prev.items()):
            if key in self.spec.keys:
                continue
            if not self.spec.prune:
                self.mine.pop((pod_name, key), None)  # disown: leave it where it is
                continue
            p = self._pod(pod_name)
            if p is None:
                continue  # pod exists but does not answer: prune once it is back
            other = self.others.get((pod_name, key))
            if o.loaded:
                if key in p.resident and not (other and other.loaded):
                    self._unload(p, key, o.name, o.embedding, "prune")
                self._set(pod_name, key, o.name, loaded=False)
            if o.pulled:
                if key in p.installed and not (other and (other.loaded or other.pulled)):
                    self._act(ActionKind.DELETE, p, key, o.name, "prune")
                self._set(pod_name, key, o.name, pulled=False)

    def _other_loaded(self, pod: str, key: str) -> bool:
        other = self.others.get((pod, key))
        return other is not None and other.loaded

    def _unload(self, p: PodState, key: str, name: str, embedding: bool, reason: str) -> None:
        if self._counted(p, key) and not self._other_loaded(p.name, key):
            self.used[p.name] -= p.resident[key].size
        self._act(ActionKind.UNLOAD, p, key, name, reason, embedding=embedding)

    def _refusal(self, m: ModelSpec, size: int | None) -> Problem | None:
        """Why no new copy of ``m`` may be pulled or loaded at all, if so."""
        if m.key in self.blocked:
            return self.blocked[m.key]
        caps = [(self._capacity(p), p.name) for p in self.avail]
        if size is None or not caps or any(m.key in p.resident for p in self.avail):
            return None  # a resident copy (its size includes the KV cache) evidently runs
        cap, biggest = max(caps)
        if size > cap:
            return Problem(
                "ModelTooLarge",
                f"{m.name}: needs {format_bytes(size)} of VRAM, more than any selected pod "
                f"has (largest: {biggest}, {format_bytes(cap)}), so it is not pulled. "
                "Select pods with bigger GPUs, raise ollamafleet.io/vram-bytes if it is "
                "wrong, or remove the model",
                m.key,
            )
        return None

    def _release(self, p: PodState, m: ModelSpec, embedding: bool) -> None:
        """Give up the pin of a copy scaled to zero without unloading it (rule 9)."""
        if self._counted(p, m.key) and not self._other_loaded(p.name, m.key):
            self.used[p.name] -= p.resident[m.key].size
        seconds = self.release_keep_alive
        self._act(
            ActionKind.LOAD,
            p,
            m.key,
            m.name,
            f"release: scaled to zero, unloads after {seconds:g}s idle",
            load=replace(m, keep_alive=float(seconds)),
            embedding=embedding,
        )

    def place(self, m: ModelSpec) -> tuple[list[str], int]:
        scaled = self.scaled.get(m.key) if m.autoscale is not None else None
        if scaled is not None:
            n = scaled.replicas
        else:
            n = len(self.avail) if m.replicas is None else m.replicas
        embedding = _is_embedding(m, self.obs)
        size = model_size(self.obs, m.key, self.sizes)
        forever = math.isinf(m.keep_alive)

        kept = [
            p
            for p in self.avail
            if (o := self.prev.get((p.name, m.key))) is not None
            and o.loaded
            and m.key in p.resident
        ]
        nodes: Counter[str] = Counter()
        chosen: list[PodState] = []
        # Keep up to n of them, greedily spreading across nodes; release the rest.
        spare = sorted(kept, key=lambda q: q.name)
        while spare and len(chosen) < n:
            p = min(spare, key=lambda q: (nodes[q.spread_key], q.name))
            spare.remove(p)
            chosen.append(p)
            nodes[p.spread_key] += 1
        for p in spare:
            if self._other_loaded(p.name, m.key):
                pass  # another pool pins it: it stays, pinned, whatever this pool does
            elif m.autoscale is not None and n == 0:
                self._release(p, m, embedding)
            else:
                self._unload(p, m.key, m.name, embedding, "scale-down")
            self._set(p.name, m.key, m.name, loaded=False)
        for p in chosen:
            if _wrong_context(m, p.resident[m.key]):
                # Ollama serves a runner with another num_ctx than clients send and would
                # reload it on their first request: reload it now, with the pool's options.
                self._act(
                    ActionKind.LOAD,
                    p,
                    m.key,
                    m.name,
                    "reload: num_ctx differs",
                    load=m,
                    embedding=embedding,
                    priority=Priority.REPAIR,
                )
            elif forever and not p.resident[m.key].pinned:
                # A client's own keep_alive replaced the pin (last writer wins).
                self._act(
                    ActionKind.LOAD,
                    p,
                    m.key,
                    m.name,
                    "re-pin",
                    load=m,
                    embedding=embedding,
                    priority=Priority.REPAIR,
                )
        # Claims whose model Ollama evicted are candidates again, not guarantees.
        for p in self.avail:
            o = self.prev.get((p.name, m.key))
            if o is not None and o.loaded and all(p.name != k.name for k in kept):
                self._set(p.name, m.key, m.name, loaded=False)

        refused = self._refusal(m, size)
        if refused is not None:
            self.problems.append(refused)
        # Replicas that went missing since the pool pinned them: their replacements first.
        lost = max(0, self.had[m.key] - len(kept))
        while len(chosen) < n and refused is None:
            best: tuple[tuple[float, ...], PodState] | None = None
            for p in self.avail:
                if p in chosen:
                    continue
                resident = m.key in p.resident
                need = (
                    0
                    if self._counted(p, m.key)
                    else (p.resident[m.key].size if resident else (size or 0))
                )
                # A copy that is already pinned costs nothing more, even on a full pod.
                if size is not None and need > 0 and need > self.free(p):
                    continue
                prev = self.prev.get((p.name, m.key))
                cls = (
                    0
                    if resident
                    else 1
                    if prev is not None and prev.loaded
                    else 2
                    if m.key in p.installed
                    else 3
                )
                rank = (nodes[p.spread_key], cls, -self.free(p))
                if best is None or (rank, p.name) < (best[0], best[1].name):
                    best = (rank, p)
            if best is None:
                break
            p = best[1]
            chosen.append(p)
            nodes[p.spread_key] += 1
            priority = Priority.REPLACE if lost > 0 else Priority.LOAD
            lost -= 1
            resident = m.key in p.resident
            if not resident and m.key not in p.installed:
                free = self.free(p)
                self._act(
                    ActionKind.PULL,
                    p,
                    m.key,
                    m.name,
                    "pull for load",
                    priority=priority,
                    # Unknown size: Ollama's first progress lines tell it; stop there if
                    # it cannot fit where it was placed.
                    max_bytes=None if size is not None or math.isinf(free) else int(free),
                )
                self._set(p.name, m.key, m.name, pulled=True)
                if size is None:
                    # Size unknown until the pull lands: load on the next pass.
                    continue
            if not self._counted(p, m.key):
                self.used[p.name] += p.resident[m.key].size if resident else (size or 0)
            prev = self.prev.get((p.name, m.key))
            if prev is not None and prev.loaded:
                reason = "reload after eviction"
            elif priority is Priority.REPLACE:
                reason = "replace lost replica"
            else:
                reason = "load"
            # Already pinned (by anyone) with the right options: loading again could only
            # shorten someone's pin.
            if not (
                resident and p.resident[m.key].pinned and not _wrong_context(m, p.resident[m.key])
            ):
                self._act(
                    ActionKind.LOAD,
                    p,
                    m.key,
                    m.name,
                    reason,
                    load=m,
                    embedding=embedding,
                    priority=priority,
                )
            self._set(p.name, m.key, m.name, loaded=True, embedding=embedding)

        if len(chosen) < n and refused is None:
            if n > len(self.avail):
                self.problems.append(
                    Problem(
                        "NotEnoughPods",
                        f"{m.name}: wants {n} replicas, {len(self.avail)} selected pods answer",
                        m.key,
                    )
                )
            else:
                frees = ", ".join(
                    f"{p.name} {format_bytes(max(self.free(p), 0))}"
                    for p in self.avail
                    if p not in chosen
                )
                demand = (
                    f" for a demand of {scaled.demand:g} ({scaled.target:g} per copy): "
                    f"{scaled.unmet(len(chosen)):g} requests beyond what the placed copies "
                    "serve, left unmet rather than evicting"
                    if scaled is not None and scaled.demand is not None
                    else ""
                )
                self.problems.append(
                    Problem(
                        "InsufficientVRAM",
                        f"{m.name}: {len(chosen)}/{n} replicas placed{demand}; needs "
                        f"{format_bytes(size or 0)} of VRAM, free: {frees}",
                        m.key,
                    )
                )

        chosen_names = {p.name for p in chosen}
        if m.pull == "all" and refused is None:
            pulling = {
                a.pod for a in self.actions if a.kind is ActionKind.PULL and a.model == m.key
            }
            for p in self.avail:
                if m.key not in p.installed and m.key not in p.resident and p.name not in pulling:
                    self._act(
                        ActionKind.PULL, p, m.key, m.name, "pull: all", priority=Priority.DISK
                    )
                    self._set(p.name, m.key, m.name, pulled=True)
        elif m.pull == "loaded":
            # Only where it is loaded: a copy this pool pulled elsewhere (a replica moved,
            # scaled down, or turned out not to fit) goes again.
            for p in self.avail:
                o = self.prev.get((p.name, m.key))
                other = self.others.get((p.name, m.key))
                if (
                    m.autoscale is None
                    and o is not None
                    and o.pulled
                    and p.name not in chosen_names
                    and m.key in p.installed
                    and m.key not in p.resident
                    and not (other and (other.loaded or other.pulled))
                ):
                    self._act(ActionKind.DELETE, p, m.key, m.name, "pull: loaded, not loaded here")
                    self._set(p.name, m.key, m.name, pulled=False)
        return [p.name for p in chosen], n


def plan(
    spec: PoolSpec,
    obs: Observation,
    ledger: Iterable[Owned] = (),
    others: Mapping[tuple[str, str], Owned] | None = None,
    *,
    sizes: Mapping[str, int] | None = None,
    blocked: Mapping[str, Problem] | None = None,
    scaled: Mapping[str, Scaled] | None = None,
    release_keep_alive: float = 300.0,
) -> Plan:
    """Decide what to pull, load, unload and delete so the pods match ``spec``.

    ``ledger`` is this pool's ownership from its last status; ``others`` is the
    union of every other pool's ledger in the namespace (see
    :func:`state.merge_claims`); ``sizes`` are model sizes from the registry's
    manifests (model key -> bytes); ``blocked`` the models the registry refused
    for good, with the problem to report; ``scaled`` the counts autoscaled models'
    demand decided (model key -> decision; a model missing there gets its
    ``minReplicas``) and ``release_keep_alive`` the keep_alive of a copy scaled to zero.
    """
    planner = _Planner(
        spec, obs, ledger, others or {}, sizes or {}, blocked or {}, scaled, release_keep_alive
    )
    for p in obs.pods:
        if not p.available:
            planner.problems.append(Problem("PodUnreachable", f"pod {p.name}: {p.error}"))
    if not obs.pods and spec.models:
        planner.problems.append(Problem("NoPods", "the selector matches no Ready pod with an IP"))
    planner.release_unlisted()
    targets: dict[str, tuple[str, ...]] = {}
    desired: dict[str, int] = {}
    for m in spec.models:
        chosen, n = planner.place(m)
        targets[m.key] = tuple(sorted(chosen))
        desired[m.key] = n
    return Plan(
        actions=tuple(planner.actions),
        ledger=tuple(sorted(planner.mine.values())),
        targets=targets,
        desired=desired,
        problems=tuple(planner.problems),
    )


def settle(before: Iterable[Owned], planned: Plan, failed: Iterable[Action]) -> tuple[Owned, ...]:
    """The ledger after executing ``planned`` when ``failed`` actions did not happen.

    Each failed action restores the flag it would have changed: a failed pull
    or load is not owned, a failed unload or delete is still owned (and retried
    on the next pass).
    """
    return revert(before, planned.ledger, failed)


def revert(
    before: Iterable[Owned], after: Iterable[Owned], undone: Iterable[Action]
) -> tuple[Owned, ...]:
    """``after`` with the flags that ``undone`` actions would have changed taken from
    ``before``: the ledger as it is while those actions are still running, or after they
    failed."""
    old = {(o.pod, o.model): o for o in before}
    new = {(o.pod, o.model): o for o in after}
    for a in undone:
        k = (a.pod, a.model)
        prev = old.get(k) or Owned(pod=a.pod, model=a.model, name=a.name)
        cur = new.get(k) or Owned(pod=a.pod, model=a.model, name=a.name)
        if a.kind in (ActionKind.LOAD, ActionKind.UNLOAD):
            cur = replace(cur, loaded=prev.loaded)
        else:
            cur = replace(cur, pulled=prev.pulled)
        if cur.empty:
            new.pop(k, None)
        else:
            new[k] = cur
    return tuple(sorted(new.values()))


def record(ledger: Iterable[Owned], done: Action) -> tuple[Owned, ...]:
    """``ledger`` after ``done`` succeeded."""
    entries = {(o.pod, o.model): o for o in ledger}
    k = (done.pod, done.model)
    cur = entries.get(k) or Owned(pod=done.pod, model=done.model, name=done.name)
    if done.kind is ActionKind.LOAD:
        cur = replace(cur, loaded=True, embedding=done.embedding)
    elif done.kind is ActionKind.UNLOAD:
        cur = replace(cur, loaded=False)
    elif done.kind is ActionKind.PULL:
        cur = replace(cur, pulled=True)
    else:
        cur = replace(cur, pulled=False)
    if cur.empty:
        entries.pop(k, None)
    else:
        entries[k] = cur
    return tuple(sorted(entries.values()))


def anticipate(
    obs: Observation, pending: Iterable[Action], sizes: Mapping[str, int] | None = None
) -> Observation:
    """``obs`` as it will be once ``pending`` actions (handed out, not finished) succeed.

    Planning on this view while they run keeps a new plan from asking for them again
    or from giving their room to something else; a failure undoes the assumption at
    the next pass, which observes again.
    """
    by_pod: dict[str, list[Action]] = {}
    for a in pending:
        by_pod.setdefault(a.pod, []).append(a)
    pods = []
    for p in obs.pods:
        acts = by_pod.get(p.name)
        if not acts or not p.available:
            pods.append(p)
            continue
        installed, resident = dict(p.installed), dict(p.resident)
        for a in acts:
            size = model_size(obs, a.model, sizes) or 0
            if a.kind is ActionKind.PULL:
                installed.setdefault(a.model, InstalledModel(name=a.name, size=size))
            elif a.kind is ActionKind.DELETE:
                installed.pop(a.model, None)
            elif a.kind is ActionKind.UNLOAD:
                resident.pop(a.model, None)
            else:
                num_ctx = dict(a.options).get("num_ctx")
                before = resident.get(a.model)
                resident[a.model] = Resident(
                    name=a.name,
                    size=before.size if before else size,
                    pinned=isinstance(a.keep_alive, int | float) and a.keep_alive < 0,
                    context_length=num_ctx if isinstance(num_ctx, int) else 0,
                )
                installed.setdefault(a.model, InstalledModel(name=a.name, size=size))
        pods.append(replace(p, installed=installed, resident=resident))
    return replace(obs, pods=tuple(pods))


def serves(m: ModelSpec, resident: Resident | None) -> bool:
    """Whether a resident copy is what the pool asked for: pinned when the pool pins
    (a client's keep_alive did not replace the pin) and with the pool's ``num_ctx``."""
    if resident is None:
        return False
    if math.isinf(m.keep_alive) and not resident.pinned:
        return False
    return not _wrong_context(m, resident)


def _wrong_context(m: ModelSpec, resident: Resident) -> bool:
    """The resident runner's per-slot context (``/api/ps`` ``context_length``) is not the
    ``num_ctx`` the pool asks for, so a client sending that ``num_ctx`` forces a reload."""
    want = m.options_dict.get("num_ctx")
    if not isinstance(want, int) or isinstance(want, bool) or not resident.context_length:
        return False
    return resident.context_length != want
