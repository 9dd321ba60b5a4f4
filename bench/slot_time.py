"""Slot time, read from the emulator's generation records: who received it, what preemption
wasted, and how fairly backlogged tenants shared it (the scheduler's benchmarks, issue #23).

Every emulated pod lists its last generations at ``GET /-/emulator/generations``: when each got
its slot (``started_at``, emulated seconds of the emulator's clock), how long it held it
(``held_seconds``), how it ended, what its slot's prompt cache served, whether its prompt ended
with a partial answer to continue, and the start of its rendered prompt (``prompt_head``).  The
benchmarks' prompts open with ``request <i> from <tenant>:``, and a continuation's prompt opens
like its original's, so each generation is joined to its request and tenant by that head.

**Waste.**  A preemption costs slot time that produced nothing a client received:

* the victim's tail: from the moment the balancer closed its connection (``left_after``) to the
  slot being free (``held_seconds``) — the token in flight, or the rest of a prompt step;
* the continuation's re-reading: its prompt tokens the slot's cache did not hold, at the model's
  prompt rate — every one of them was read or written once already (the original prompt, the
  partial answer).

The fleet's slot time is the sum of ``held_seconds`` over every generation of the run (the
slot-seconds the pods spent), so *waste share* = waste / that sum.

Everything here is pure: records in, figures out (table-tested in tests/bench).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ollama_balancer.core.scheduling import weighted_jain

__all__ = [
    "Held",
    "backlogged",
    "clock_offset",
    "held_slots",
    "served",
    "window_fairness",
]

#: How a benchmark prompt opens (rendered by the emulator after its role header).
_HEAD = re.compile(r"request (\d+) from ([\w.-]+):")


@dataclass(frozen=True, slots=True)
class Held:
    """One generation's hold on a slot, joined to its request."""

    request: int
    """The request's index in the trace."""
    tenant: str
    start: float
    """When it got the slot, emulated seconds of the emulator's clock."""
    held: float
    """Emulated seconds it held the slot."""
    continuation: bool
    outcome: str
    waste: float
    """Slot-seconds of this generation that preemption wasted (the module doc)."""

    @property
    def preempted(self) -> bool:
        return self.outcome.startswith("cancelled")


def held_slots(generations: Iterable[Mapping[str, Any]], prompt_rate: float) -> list[Held]:
    """The generations of benchmark requests (others, e.g. warm-ups, are left out), with their
    waste; ``prompt_rate`` is the model's prompt tokens per emulated second."""
    out: list[Held] = []
    for g in generations:
        m = _HEAD.search(str(g.get("prompt_head", "")))
        if m is None:
            continue
        held = float(g["held_seconds"])
        outcome = str(g["outcome"])
        waste = 0.0
        left = g.get("left_after")
        if outcome.startswith("cancelled") and left is not None:
            waste += max(0.0, held - float(left))
        continuation = bool(g.get("continuation"))
        if continuation:
            uncached = max(0, int(g["prompt_tokens"]) - int(g["cached_tokens"]))
            waste += min(held, uncached / prompt_rate)
        out.append(
            Held(
                request=int(m.group(1)),
                tenant=m.group(2),
                start=float(g["started_at"]),
                held=held,
                continuation=continuation,
                outcome=outcome,
                waste=waste,
            )
        )
    return out


def clock_offset(helds: Sequence[Held], arrivals: Mapping[int, float]) -> float:
    """The emulator's clock minus the trace's (both emulated seconds): the least delay between
    a request's arrival and its first slot, over the requests.  The first requests of a trace
    find free slots, so that delay is the network's, a few milliseconds."""
    firsts: dict[int, float] = {}
    for h in helds:
        if not h.continuation:
            firsts[h.request] = min(firsts.get(h.request, math.inf), h.start)
    deltas = [s - arrivals[r] for r, s in firsts.items() if r in arrivals]
    return min(deltas) if deltas else 0.0


def _windows(start: float, end: float, width: float) -> list[tuple[float, float]]:
    n = max(0, int((end - start) // width))
    return [(start + i * width, start + (i + 1) * width) for i in range(n)]


def served(
    helds: Iterable[Held], offset: float, start: float, end: float, width: float
) -> list[dict[str, float]]:
    """Per window of ``width`` seconds from ``start`` to ``end`` (the trace's clock): each
    tenant's slot-seconds held inside the window (a hold spanning windows is split)."""
    wins = _windows(start, end, width)
    out: list[dict[str, float]] = [{} for _ in wins]
    for h in helds:
        a, b = h.start - offset, h.start - offset + h.held
        for i, (lo, hi) in enumerate(wins):
            part = min(b, hi) - max(a, lo)
            if part > 0:
                out[i][h.tenant] = out[i].get(h.tenant, 0.0) + part
    return out


def backlogged(
    waits: Mapping[str, Iterable[tuple[float, float]]], start: float, end: float, width: float
) -> list[set[str]]:
    """Per window: the tenants that had a request waiting for its first token throughout it
    (``waits``: each tenant's (arrival, first token) intervals, the trace's clock)."""
    merged: dict[str, list[tuple[float, float]]] = {}
    for tenant, spans in waits.items():
        runs: list[tuple[float, float]] = []
        for a, b in sorted(spans):
            if runs and a <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][1], b))
            else:
                runs.append((a, b))
        merged[tenant] = runs
    out: list[set[str]] = []
    for lo, hi in _windows(start, end, width):
        out.append({t for t, runs in merged.items() if any(a <= lo and hi <= b for a, b in runs)})
    return out


def window_fairness(
    served_per_window: Sequence[Mapping[str, float]],
    backlogged_per_window: Sequence[set[str]],
    weights: Mapping[str, float],
) -> list[float]:
    """Jain's index of slot-seconds / weight over the backlogged tenants, for each window in
    which at least two tenants were backlogged (1 = exactly by weight)."""
    return [
        weighted_jain(s, weights, b)
        for s, b in zip(served_per_window, backlogged_per_window, strict=True)
        if len(b) >= 2
    ]
