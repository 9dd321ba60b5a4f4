"""A balancer rig with API keys: five keys of different powers in a keys file, and a
``bearer`` header for each (the security suites' shared setup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_balancer.core.auth import hash_key

from .fleet import Rig, RigFactory, nodes

__all__ = ["CHAT", "KEYS", "M2", "M", "bearer", "make"]

M = "llama3.2:3b"
M2 = "qwen2.5:7b"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": False}

KEYS = f"""
keys:
  - name: alice
    key_sha256: {hash_key("alice-key")}
  - name: bob
    key_sha256: {hash_key("bob-key")}
    models: ["llama3*"]
    requests_per_minute: 2
  - name: carol
    key_sha256: {hash_key("carol-key")}
    max_concurrent: 1
  - name: dave
    key_sha256: {hash_key("dave-key")}
    tokens_per_minute: 5
  - name: root
    key_sha256: {hash_key("root-key")}
    admin: true
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make(rig_factory: RigFactory, tmp_path: Path, **kw: Any) -> Rig:
    path = tmp_path / "keys.yaml"
    if not path.exists():
        path.write_text(KEYS)
    return await rig_factory(
        nodes(("a", [M, M2], [M, M2]), num_parallel=4),
        auth_file=str(path),
        auth_reload_seconds=0.05,
        default_slots=4,
        **kw,
    )
