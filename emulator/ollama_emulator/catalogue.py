"""The model catalogue: what an emulated registry can serve and how each model behaves (pure).

A :class:`ModelSpec` carries the metadata Ollama reports (``/api/tags``,
``/api/show``, ``/api/ps``) and the performance numbers the emulator plays back
(load time, decode rate).  Names follow Ollama's normalisation
(:mod:`ollama_wire.names`), so ``llama3.2``, ``llama3.2:latest`` and
``library/llama3.2`` find the same spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from ollama_wire import names

__all__ = ["Catalogue", "ModelSpec", "default_catalogue", "parse_size"]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``24GiB``, ``2.0 GB``, ``1000`` (YAML-friendly sizes)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int | float):
        return int(value)
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"invalid size {value!r}")
    return int(float(number) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class ModelSpec:
    """One model as the registry knows it and as a runner behaves."""

    name: str
    """Registry name, e.g. ``llama3.2:3b``; normalised to ``DisplayShortest``."""
    size_bytes: int
    """Sum of the manifest's layers (``/api/tags`` ``size``)."""
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    context_length: int = 131072
    """Trained context; the automatic ``num_ctx`` is clamped to it."""
    embedding_length: int = 3072
    """Hidden size; also the dimension of embeddings this model returns."""
    capabilities: tuple[str, ...] = ("completion",)
    load_seconds: float = 3.0
    """Emulated seconds to start the runner (scaled by ``time_scale``)."""
    tokens_per_second: float = 50.0
    """Decode rate."""
    prompt_tokens_per_second: float = 1000.0
    """Prefill rate."""
    response_tokens: int = 24
    """Tokens of a natural answer (``stop``); a smaller ``num_predict`` gives ``length``."""
    kv_bytes_per_token: int = 0
    """KV-cache bytes per context token; VRAM need = size + kv × num_ctx × num_parallel."""
    aliases: tuple[str, ...] = ()
    """Other registry tags with the same manifest (``llama3.2:latest`` ≡ ``llama3.2:3b``)."""
    digest: str = ""
    """Manifest digest (64 hex, no ``sha256:``); derived from the name when empty."""
    families: tuple[str, ...] = field(default=())
    private: bool = False
    """The registry knows it but answers 401: the node's key may not pull it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", names.display(self.name))
        object.__setattr__(self, "aliases", tuple(names.display(a) for a in self.aliases))
        object.__setattr__(self, "capabilities", tuple(self.capabilities))
        if not self.digest:
            digest = hashlib.sha256(f"manifest:{self.name}".encode()).hexdigest()
            object.__setattr__(self, "digest", digest)
        if not self.families:
            object.__setattr__(self, "families", (self.family,))

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities

    def vram_bytes(self, num_ctx: int, num_parallel: int) -> int:
        """Memory a runner needs: weights plus a KV cache for every slot (linear on purpose)."""
        return self.size_bytes + self.kv_bytes_per_token * num_ctx * num_parallel

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown model field(s) {sorted(unknown)} in {doc.get('name')!r}")
        kwargs: dict[str, Any] = dict(doc)
        kwargs["size_bytes"] = parse_size(doc["size_bytes"])
        for key in ("capabilities", "aliases", "families"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


class Catalogue:
    """Specs by name; lookups accept any spelling Ollama would accept."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: list[ModelSpec] = []
        self._by_name: dict[str, ModelSpec] = {}
        for spec in specs:
            self._specs.append(spec)
            for name in (spec.name, *spec.aliases):
                self._by_name[names.canonical(name)] = spec

    def find(self, name: str) -> ModelSpec | None:
        try:
            return self._by_name.get(names.canonical(name))
        except names.InvalidModelName:
            return None

    def __getitem__(self, name: str) -> ModelSpec:
        spec = self.find(name)
        if spec is None:
            raise KeyError(name)
        return spec

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_specs(self, specs: Iterable[ModelSpec]) -> Catalogue:
        """A copy with ``specs`` added (a spec with an existing name replaces it)."""
        added = list(specs)
        replaced = {names.canonical(s.name) for s in added}
        kept = [s for s in self._specs if names.canonical(s.name) not in replaced]
        return Catalogue([*kept, *added])


def default_catalogue() -> Catalogue:
    """The built-in catalogue (``default.yaml``): a dozen common models with realistic sizes."""
    text = resources.files(__package__).joinpath("default.yaml").read_text("utf-8")
    doc = yaml.safe_load(text)
    return Catalogue(ModelSpec.from_mapping(m) for m in doc["catalogue"])
