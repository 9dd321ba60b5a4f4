"""Leak accounting for the fault tests: tasks, file descriptors, memory and the ledger of a
:class:`~.fleet.Rig`, and counters summed over its emulated nodes."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from .eventually import eventually
from .fleet import Rig

__all__ = [
    "Baseline",
    "assert_settled",
    "baseline",
    "completed",
    "open_fds",
    "path_count",
    "rss_kib",
    "started",
]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def completed(rig: Rig) -> int:
    return sum(n.stats.generations_completed for n in rig.fleet.nodes)


def started(rig: Rig) -> int:
    return sum(n.stats.generations_started for n in rig.fleet.nodes)


def path_count(rig: Rig, path: str) -> int:
    return sum(n.stats.requests[path] for n in rig.fleet.nodes)


@dataclass
class Baseline:
    tasks: int
    fds: int


def baseline() -> Baseline:
    """Tasks and fds of a warm rig (pollers running, pooled connections open)."""
    return Baseline(len(asyncio.all_tasks()), open_fds())


async def assert_settled(rig: Rig, base: Baseline, *, fd_slack: int = 2) -> None:
    """In-flight counters back to zero, and no task or fd growth beyond a pooled few."""
    await rig.until(lambda: rig.bal.ledger.total_inflight() == 0, timeout=10)
    figures = rig.bal.ledger.occupancy()
    assert not figures.held and not figures.loads, figures
    # Idle keep-alive connections are pooled, not leaked: close the pools (the test
    # client's and the balancer's transport), then every server-side connection task
    # and socket must go away.
    await rig.session.connector.close()  # type: ignore[union-attr]
    await rig.bal.transport.close()

    def leak() -> str:
        names = sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks())  # type: ignore[union-attr]
        return (
            f"tasks and fds back to the baseline, not a leak: tasks {len(names)} (baseline "
            f"{base.tasks}: {names}), fds {open_fds()} (baseline {base.fds} + {fd_slack})"
        )

    await eventually(
        lambda: len(asyncio.all_tasks()) <= base.tasks and open_fds() <= base.fds + fd_slack,
        leak,
        timeout=10,
        interval=0.05,
    )
