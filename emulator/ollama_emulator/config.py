"""Typed settings of an emulated fleet, from Python or from YAML (pure).

YAML shape (every node key is optional except ``name``; ``defaults`` applies to
every node; ``catalogue`` adds to or replaces entries of the built-in one)::

    time_scale: 0.01
    defaults: {vram: 24GiB, num_parallel: 2, keep_alive: 5m}
    catalogue: [{name: tiny:1b, size_bytes: 1GB, load_seconds: 2}]
    registry: {bind: 127.0.0.1, port: 0}   # the emulated registry's manifests
    nodes:
      - {name: gpu-a, host: 127.0.0.2, port: 11434, installed: [llama3.2], loaded: [llama3.2]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ollama_wire.durations import FOREVER, parse_keep_alive

from .catalogue import Catalogue, ModelSpec, default_catalogue, parse_size

__all__ = ["FleetConfig", "NodeConfig", "auto_context_length", "default_fleet", "load_config"]

GIB = 2**30


def auto_context_length(vram_bytes: int) -> int:
    """Ollama's automatic ``num_ctx`` tier by VRAM (≥47 GiB → 256k, ≥23 GiB → 32k, else 4k)."""
    if vram_bytes >= 47 * GIB:
        return 262144
    if vram_bytes >= 23 * GIB:
        return 32768
    return 4096


@dataclass(frozen=True)
class NodeConfig:
    """One emulated Ollama server (the ``OLLAMA_*`` knobs of one pod)."""

    name: str
    host: str = "127.0.0.1"
    """Loopback address to bind (anything in 127.0.0.0/8)."""
    port: int = 0
    """0 picks a free port."""
    vram_bytes: int = 24 * GIB
    num_parallel: int = 1
    """``OLLAMA_NUM_PARALLEL``: slots per loaded model (forced to 1 for embedding models)."""
    max_queue: int = 512
    """``OLLAMA_MAX_QUEUE``: pending loads before 503 ``server busy``."""
    max_loaded_models: int = 3
    """``OLLAMA_MAX_LOADED_MODELS`` (a total, as in the code)."""
    keep_alive: float = 300.0
    """``OLLAMA_KEEP_ALIVE`` in seconds; ``math.inf`` is forever."""
    context_length: int | None = None
    """``OLLAMA_CONTEXT_LENGTH``; None = automatic tier from ``vram_bytes``."""
    pull_bandwidth: float = 100e6
    """Registry download rate in bytes per emulated second."""
    installed: Sequence[str] = ()
    """Models on disk at start (names from the catalogue)."""
    loaded: Sequence[str] = ()
    """Models resident at start (implicitly installed), loaded instantly."""
    preload_keep_alive: float = FOREVER
    """keep_alive of the models in ``loaded``: pinned by default, like an operator preload."""
    num_batch: int = 512
    """Prompt tokens a runner evaluates per step (Ollama's ``num_batch``, llama-server's
    ``-b``): a prompt whose client left stops at the end of a step."""
    cancel_poll_seconds: float = 1.0
    """How often a runner looks at a silent client connection while it processes a prompt
    (llama-server's ``HTTP_POLLING_SECONDS``); ``inf`` = only when the first token is
    sent, as Ollama's Go runners before 0.30 did."""
    slot_prompt_similarity: float = 0.1
    """A free slot is chosen for its cache when its common prefix with the prompt exceeds
    this share of the prompt (llama-server's ``--slot-prompt-similarity``), else the least
    recently used one."""
    prompt_cache_ram: int = 8 * GIB
    """Host memory for saved slot caches per runner (llama-server's ``--cache-ram``,
    8192 MiB); 0 turns it off (Ollama's Go runners had none)."""

    def default_num_ctx(self) -> int:
        return self.context_length or auto_context_length(self.vram_bytes)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> NodeConfig:
        kwargs: dict[str, Any] = dict(doc)
        if "vram" in kwargs:
            kwargs["vram_bytes"] = kwargs.pop("vram")
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"unknown node field(s) {sorted(unknown)} in {doc.get('name')!r}")
        if "vram_bytes" in kwargs:
            kwargs["vram_bytes"] = parse_size(kwargs["vram_bytes"])
        if "prompt_cache_ram" in kwargs:
            kwargs["prompt_cache_ram"] = parse_size(kwargs["prompt_cache_ram"])
        if "cancel_poll_seconds" in kwargs:
            kwargs["cancel_poll_seconds"] = float(kwargs["cancel_poll_seconds"])
        if "pull_bandwidth" in kwargs:
            kwargs["pull_bandwidth"] = float(parse_size(kwargs["pull_bandwidth"]))
        for key in ("keep_alive", "preload_keep_alive"):
            if key in kwargs:
                kwargs[key] = _seconds(kwargs[key])
        for key in ("installed", "loaded"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key] or ())
        return cls(**kwargs)


def _seconds(value: Any) -> float:
    # Like OLLAMA_KEEP_ALIVE: a bare integer string means seconds.
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    seconds = parse_keep_alive(value)
    return FOREVER if seconds is None else seconds


@dataclass(frozen=True)
class FleetConfig:
    """Nodes, the registry's catalogue and the time scale shared by all of them."""

    nodes: Sequence[NodeConfig]
    catalogue: Catalogue = field(default_factory=default_catalogue)
    time_scale: float = 1.0
    """Multiplies every emulated duration (load, tokens, pulls, keep_alive): 0.01 = 100× faster."""
    registry_bind: str = "127.0.0.1"
    """Loopback address of the emulated registry (manifests over HTTP, registry_server.py)."""
    registry_port: int = 0
    """Its port; 0 picks a free one."""

    def __post_init__(self) -> None:
        if not self.time_scale > 0 or math.isinf(self.time_scale):
            raise ValueError("time_scale must be a positive number")
        seen = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r}")
            seen.add(node.name)
            for model in (*node.installed, *node.loaded):
                if self.catalogue.find(model) is None:
                    raise ValueError(f"node {node.name!r}: model {model!r} is not in the catalogue")

    def with_time_scale(self, time_scale: float) -> FleetConfig:
        return replace(self, time_scale=time_scale)


def load_config(source: str | Path | Mapping[str, Any]) -> FleetConfig:
    """A :class:`FleetConfig` from a YAML file path or an already-parsed mapping."""
    if isinstance(source, Mapping):
        doc: Mapping[str, Any] = source
    else:
        doc = yaml.safe_load(Path(source).read_text("utf-8")) or {}
    if "fleet" in doc and "nodes" not in doc:  # the layout of default.yaml
        doc = {**doc["fleet"], "catalogue": doc.get("catalogue", [])}
    catalogue = default_catalogue()
    extra = [ModelSpec.from_mapping(m) for m in doc.get("catalogue") or []]
    if doc.get("replace_catalogue"):
        catalogue = Catalogue(extra)
    elif extra:
        catalogue = catalogue.with_specs(extra)
    defaults = dict(doc.get("defaults") or {})
    nodes = [NodeConfig.from_mapping({**defaults, **n}) for n in doc.get("nodes") or []]
    registry = dict(doc.get("registry") or {})
    unknown = set(registry) - {"bind", "port"}
    if unknown:
        raise ValueError(f"unknown registry field(s) {sorted(unknown)}")
    return FleetConfig(
        nodes=nodes,
        catalogue=catalogue,
        time_scale=float(doc.get("time_scale", 1)),
        registry_bind=str(registry.get("bind", "127.0.0.1")),
        registry_port=int(registry.get("port", 0)),
    )


def default_fleet() -> FleetConfig:
    """The built-in three-node fleet of ``default.yaml``."""
    text = resources.files(__package__).joinpath("default.yaml").read_text("utf-8")
    doc = yaml.safe_load(text)
    return load_config({**doc["fleet"], "catalogue": []})
