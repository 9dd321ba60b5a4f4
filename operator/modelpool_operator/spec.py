"""The ModelPool spec, parsed once into frozen values (pure).

The CRD's OpenAPI schema (``manifests/crds/modelpools.ollamafleet.io.yaml``)
already rejects most bad input with a 422 at ``kubectl apply`` time; this module
re-checks what a schema cannot express (Ollama's exact name grammar, duplicate
models under different spellings such as ``llama3`` and ``llama3:latest``) and
turns the raw mapping into values the planner can trust.  Everything here is
pure: no I/O, no clocks, no kopf.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ollama_wire.durations import FOREVER, KeepAliveError, parse_keep_alive
from ollama_wire.jsonvalue import JsonValue
from ollama_wire.names import InvalidModelName, parse
from ollama_wire.quantity import parse_quantity as _parse_quantity

from .autoscale import Autoscale

__all__ = [
    "ALL",
    "AUTOSCALE_FIELDS",
    "DEFAULT_SCALE_DOWN_DELAY",
    "DEFAULT_TARGET_REQUESTS",
    "LabelSelector",
    "ModelSpec",
    "PoolSpec",
    "SpecError",
    "explain_invalid_name",
    "parse_pool_spec",
    "parse_quantity",
]

#: ``replicas: all`` — keep the model loaded on every selected pod.
ALL: Literal["all"] = "all"

PullPolicy = Literal["all", "loaded"]

#: The per-model autoscaling fields (KubeAI's names); any of them replaces ``replicas``.
AUTOSCALE_FIELDS = ("minReplicas", "maxReplicas", "targetRequests", "scaleDownDelaySeconds")
#: One request in flight or queued per warm copy: Ollama's default of one slot per model
#: (``OLLAMA_NUM_PARALLEL=1``, the chart's ``ollama.numParallel``).
DEFAULT_TARGET_REQUESTS = 1.0
#: Five minutes, the HorizontalPodAutoscaler's scale-down stabilization window: a warm copy
#: costs a load (seconds to minutes) to bring back, so it is not given up for a lull.
DEFAULT_SCALE_DOWN_DELAY = 300.0


class SpecError(ValueError):
    """The spec is well-formed YAML but not a usable ModelPool; ``str()`` says where."""


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``: matchLabels AND every matchExpression."""

    match_labels: tuple[tuple[str, str], ...] = ()
    #: (key, operator, values) with operator In, NotIn, Exists or DoesNotExist
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of ``spec.models``."""

    #: as the user wrote it; what we send to Ollama (``/api/pull`` accepts any spelling)
    name: str
    #: canonical key (names.canonical): identity for every comparison
    key: str
    #: pinned copies wanted; None means "all selected pods".  For an autoscaled model
    #: ``minReplicas``: the count it starts from before any demand is known.
    replicas: int | None = 1
    pull: PullPolicy = "all"
    #: seconds; math.inf = forever (Ollama's negative keep_alive)
    keep_alive: float = FOREVER
    #: runner options for the warm load; they must match what clients send,
    #: or Ollama reloads the model on the first request (docs/ollama.md §5.6)
    options: tuple[tuple[str, Any], ...] = ()
    #: True/False when declared; None = decide from /api/tags capabilities
    embedding: bool | None = None
    #: min/max/target/delay when the count follows demand instead of ``replicas``
    autoscale: Autoscale | None = None

    @property
    def keep_alive_wire(self) -> float | int:
        """``keep_alive`` for the load request, as JSON seconds.

        A negative *number* means forever to Ollama, but the *string* ``"-1"``
        is a 400 (``missing unit``), so numbers are always sent.
        """
        if math.isinf(self.keep_alive):
            return -1
        return int(self.keep_alive) if self.keep_alive.is_integer() else self.keep_alive

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    selector: LabelSelector
    models: tuple[ModelSpec, ...]
    prune: bool = False
    #: VRAM of a selected pod that has no ``ollamafleet.io/vram-bytes`` annotation (None = unknown)
    default_vram_bytes: int | None = None
    keys: frozenset[str] = field(default=frozenset(), compare=False)

    def model(self, key: str) -> ModelSpec | None:
        for m in self.models:
            if m.key == key:
                return m
        return None


def parse_quantity(value: JsonValue) -> int:
    """A Kubernetes quantity (``24Gi``, ``80G``, ``1e9``, ``1024``) as whole bytes."""
    if not isinstance(value, str | int):
        raise SpecError(f"not a quantity: {value!r}")
    try:
        return _parse_quantity(value)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


_CHARS = "letters, digits, '_', '-' and '.'"


def explain_invalid_name(name: JsonValue) -> str:
    """Why Ollama would refuse ``name`` (its grammar, types/model/name.go), in words.

    Ollama itself only ever says ``invalid model name``; a person fixing a spec
    needs to know which part is wrong.
    """
    if not isinstance(name, str) or not name:
        return "the name is empty"
    if name != name.strip():
        return "the name starts or ends with whitespace"
    if "://" in name:
        return "a model name has no URL scheme: write host/namespace/model:tag"
    rest, tag = name, None
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
    parts = rest.split("/")
    if len(parts) > 3:
        return f"{len(parts)} '/'-separated parts; at most 3 (host/namespace/model)"
    if any(not part for part in parts):
        return "an empty part between '/'"
    labels = {3: ("host", "namespace", "model"), 2: ("namespace", "model"), 1: ("model",)}
    for label, part in zip(labels[len(parts)], parts, strict=True):
        limit = {"host": 350, "namespace": 80}.get(label, 80)
        allowed = {
            "host": _CHARS + " and ':' (a port)",
            "namespace": "letters, digits, '_' and '-' (no dots)",
        }.get(label, _CHARS)
        if len(part) > limit:
            return f"the {label} {part!r} is longer than {limit} characters"
        if not (part[0].isascii() and (part[0].isalnum() or part[0] == "_")):
            return f"the {label} {part!r} must start with a letter, a digit or '_'"
        ok = (
            set("_-")
            | ({"."} if label != "namespace" else set())
            | ({".", ":"} if label == "host" else set())
        )
        bad = sorted({c for c in part if not (c.isascii() and c.isalnum()) and c not in ok})
        if bad:
            return f"the {label} {part!r} contains {''.join(bad)!r}; allowed: {allowed}"
    if tag is not None:
        if not tag:
            return "an empty tag after ':'"
        if len(tag) > 80:
            return f"the tag {tag!r} is longer than 80 characters"
        if not (tag[0].isascii() and (tag[0].isalnum() or tag[0] == "_")):
            return f"the tag {tag!r} must start with a letter, a digit or '_'"
        bad = sorted({c for c in tag if not (c.isascii() and c.isalnum()) and c not in "_-."})
        if bad:
            return f"the tag {tag!r} contains {''.join(bad)!r}; allowed: {_CHARS}"
    return "Ollama's name grammar refuses it"


def _selector(raw: JsonValue) -> LabelSelector:
    if not isinstance(raw, Mapping):
        raise SpecError("spec.selector: must be a label selector object")
    labels = raw.get("matchLabels") or {}
    exprs = raw.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(exprs, Sequence):
        raise SpecError("spec.selector: matchLabels must be a map, matchExpressions a list")
    parsed: list[tuple[str, str, tuple[str, ...]]] = []
    for i, e in enumerate(exprs):
        op = e.get("operator") if isinstance(e, Mapping) else None
        key = e.get("key") if isinstance(e, Mapping) else None
        raw_values = e.get("values") if isinstance(e, Mapping) else None
        if raw_values is not None and not isinstance(raw_values, list):
            raise SpecError(f"spec.selector.matchExpressions[{i}].values: must be a list")
        values = tuple(str(v) for v in raw_values or ())
        if op not in ("In", "NotIn", "Exists", "DoesNotExist") or not key:
            raise SpecError(f"spec.selector.matchExpressions[{i}]: bad key or operator")
        if op in ("In", "NotIn") and not values:
            raise SpecError(f"spec.selector.matchExpressions[{i}]: {op} needs values")
        parsed.append((str(key), str(op), values))
    selector = LabelSelector(
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        match_expressions=tuple(parsed),
    )
    # An empty selector would claim every pod of the namespace: almost surely a typo.
    if selector.empty:
        raise SpecError("spec.selector: must select something (matchLabels or matchExpressions)")
    return selector


def _replicas(raw: JsonValue, where: str) -> int | None:
    if raw is None:
        return 1
    if raw == ALL:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise SpecError(f"{where}.replicas: must be an integer >= 0 or 'all', got {raw!r}")
    return raw


def _count(raw: JsonValue, where: str, lowest: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < lowest:
        raise SpecError(f"{where}: must be an integer >= {lowest}, got {raw!r}")
    return raw


def _autoscale(raw: Mapping[str, Any], where: str) -> Autoscale | None:
    """The autoscaling fields of one model, or None when it has a fixed ``replicas``."""
    given = [f for f in AUTOSCALE_FIELDS if raw.get(f) is not None]
    if not given:
        return None
    if raw.get("replicas") is not None:
        raise SpecError(
            f"{where}: replicas and {', '.join(given)} are exclusive: "
            "give a fixed replicas or the autoscaling fields"
        )
    if raw.get("maxReplicas") is None:
        raise SpecError(f"{where}.maxReplicas: required with {', '.join(given)}")
    lo = _count(raw.get("minReplicas", 1), f"{where}.minReplicas", 0)
    hi = _count(raw["maxReplicas"], f"{where}.maxReplicas", 1)
    if hi < lo:
        raise SpecError(f"{where}.maxReplicas: {hi} is below minReplicas {lo}")
    target = raw.get("targetRequests", DEFAULT_TARGET_REQUESTS)
    if (
        isinstance(target, bool)
        or not isinstance(target, int | float)
        or not math.isfinite(target)
        or target <= 0
    ):
        raise SpecError(f"{where}.targetRequests: must be a number > 0, got {target!r}")
    delay = raw.get("scaleDownDelaySeconds", DEFAULT_SCALE_DOWN_DELAY)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < math.inf:
        raise SpecError(f"{where}.scaleDownDelaySeconds: must be a number >= 0, got {delay!r}")
    return Autoscale(
        min_replicas=lo,
        max_replicas=hi,
        target_requests=float(target),
        scale_down_delay=float(delay),
    )


def _model(raw: JsonValue, i: int) -> ModelSpec:
    where = f"spec.models[{i}]"
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: must be an object")
    name = raw.get("name")
    try:
        key = parse(name if isinstance(name, str) else "").canonical
    except InvalidModelName:
        raise SpecError(
            f"{where}.name: invalid model name {name!r}: {explain_invalid_name(name)}"
        ) from None
    assert isinstance(name, str)
    pull = raw.get("pull", "all")
    if pull not in ("all", "loaded"):
        raise SpecError(f"{where}.pull: must be 'all' or 'loaded', got {pull!r}")
    keep_alive_raw = raw.get("keepAlive", -1)
    try:
        # "-1" is what people write for forever (OLLAMA_KEEP_ALIVE accepts it);
        # as a JSON string Ollama would refuse it, so it is translated here.
        if isinstance(keep_alive_raw, str) and re.fullmatch(r"-?\d+", keep_alive_raw):
            keep_alive_raw = int(keep_alive_raw)
        keep_alive = parse_keep_alive(keep_alive_raw)
    except KeepAliveError as exc:
        raise SpecError(f"{where}.keepAlive: {exc}") from exc
    if keep_alive is None or keep_alive == 0:
        raise SpecError(f"{where}.keepAlive: 0 would unload right after loading; use replicas: 0")
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{where}.options: must be an object")
    embedding = raw.get("embedding")
    if embedding is not None and not isinstance(embedding, bool):
        raise SpecError(f"{where}.embedding: must be a boolean")
    autoscale = _autoscale(raw, where)
    return ModelSpec(
        name=name,
        key=key,
        replicas=(
            _replicas(raw.get("replicas"), where) if autoscale is None else autoscale.min_replicas
        ),
        pull="loaded" if pull == "loaded" else "all",
        keep_alive=keep_alive,
        options=tuple(sorted((str(k), v) for k, v in options.items())),
        embedding=embedding,
        autoscale=autoscale,
    )


def parse_pool_spec(raw: Mapping[str, Any]) -> PoolSpec:
    """Validate ``ModelPool.spec``; raise :class:`SpecError` naming the bad field."""
    selector = _selector(raw.get("selector"))
    models_raw = raw.get("models") or []
    if not isinstance(models_raw, Sequence) or isinstance(models_raw, str):
        raise SpecError("spec.models: must be a list")
    models = tuple(_model(m, i) for i, m in enumerate(models_raw))
    seen: dict[str, str] = {}
    for m in models:
        if m.key in seen:
            raise SpecError(f"spec.models: {m.name!r} and {seen[m.key]!r} are the same model")
        seen[m.key] = m.name
    prune = raw.get("prune", False)
    if not isinstance(prune, bool):
        raise SpecError("spec.prune: must be a boolean")
    vram_raw = raw.get("defaultVramBytes")
    vram = None if vram_raw is None else parse_quantity(vram_raw)
    return PoolSpec(
        selector=selector,
        models=models,
        prune=prune,
        default_vram_bytes=vram,
        keys=frozenset(seen),
    )
