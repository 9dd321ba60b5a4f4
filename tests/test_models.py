"""The kernel's ``/api/tags`` and ``/api/ps`` records: one wire type for every component."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_emulator.catalogue import default_catalogue
from ollama_emulator.clock import ScaledClock
from ollama_emulator.registry import Library
from ollama_emulator.wire import tags_entry
from ollama_wire.models import InstalledModel, ResidentModel, parse_installed, parse_resident

LLAMA = "registry.ollama.ai/library/llama3.2:latest"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 7, "digest": "d"},
            InstalledModel("llama3.2:latest", 7, "d"),
            id="name and model",
        ),
        pytest.param(
            {"model": "llama3.2", "size": 1}, InstalledModel("llama3.2", 1), id="model only"
        ),
        pytest.param(
            {"name": "bge-m3", "size": 1, "capabilities": ["embedding"]},
            InstalledModel("bge-m3", 1, capabilities=frozenset({"embedding"})),
            id="capabilities",
        ),
        pytest.param({"name": "bad name!", "size": 1}, None, id="invalid name dropped"),
        pytest.param({"size": 1}, None, id="no name dropped"),
    ],
)
def test_parse_installed(entry: dict[str, Any], expected: InstalledModel | None) -> None:
    assert parse_installed([entry]) == (() if expected is None else (expected,))


def test_records_are_keyed_by_the_canonical_name() -> None:
    (inst,) = parse_installed([{"name": "Llama3.2", "size": 1}])
    (res,) = parse_resident([{"name": "llama3.2:latest", "size": 2, "size_vram": 2}])
    assert inst.key == res.key == LLAMA
    assert res == ResidentModel("llama3.2:latest", 2, 2)


def test_emulator_tags_entry_reads_as_the_kernel_record() -> None:
    """The emulator's library entry renders the wire record the balancer and operator read."""
    spec = next(s for s in default_catalogue() if "embedding" not in s.capabilities)
    library = Library(ScaledClock())
    entry = library.install(spec.name, spec)
    (record,) = parse_installed([tags_entry(entry)])
    assert (record.name, record.size, record.digest, record.capabilities) == (
        entry.display,
        spec.size_bytes,
        spec.digest,
        frozenset(spec.capabilities),
    )
    assert record.modified_at and record.key == entry.name.canonical
