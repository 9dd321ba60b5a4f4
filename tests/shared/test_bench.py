"""The shared-state micro-benchmark runs (a second-long version of bench/shared_state.py)."""

from __future__ import annotations

import pytest
from bench.shared_state import run


@pytest.mark.timeout(60)
async def test_shared_state_bench_smoke() -> None:
    table = await run(20, (5,))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| local acquire + release (today)",
        "| shared acquire (one script)",
        "| shared release (one script)",
        "| shared acquire + holder + charge (one script)",
        "| shared release + charge (one script)",
        "| acquire on A → visible in B's mirror",
        "| full refresh, 5 pairs",
    ]
