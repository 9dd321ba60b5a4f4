"""Builders for the scheduler's table tests: short holders, candidates and views."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ollama_balancer.core.queueing import Priority
from ollama_balancer.core.scheduling import Candidate, Holder, PoolView, TenantKey

C, S, B = Priority.CRITICAL, Priority.STANDARD, Priority.BATCH
NOW = 100.0


def holder(
    lease: str,
    cls: Priority = S,
    tenant: str = "t",
    *,
    weight: float = 1.0,
    started: float = 0.0,
    expected: float = 1000.0,
    generating: bool = True,
    redo: float = 1.0,
    preemptions: int = 0,
    resumable: bool = True,
    pod: str = "pod-0",
    replica: str = "r0",
) -> Holder:
    """A slot in use; by default a long, generating, resumable one (a fine victim)."""
    return Holder(
        lease=lease,
        pod=pod,
        replica=replica,
        cls=cls,
        tenant=tenant,
        weight=weight,
        started=started,
        first_byte=started + 0.5 if generating else None,
        expected_seconds=expected,
        redo_cost=redo,
        preemptions=preemptions,
        resumable=resumable,
    )


def cand(
    id: str,
    cls: Priority = S,
    tenant: str = "t",
    *,
    weight: float = 1.0,
    arrival: float = 0.0,
    expected: float = 1.0,
    deadline: float | None = None,
    preemptions: int = 0,
    resumable: bool = True,
    replica: str = "r0",
) -> Candidate:
    """A waiting request; by default short and resumable."""
    return Candidate(
        id=id,
        replica=replica,
        cls=cls,
        tenant=tenant,
        weight=weight,
        arrival=arrival,
        expected_seconds=expected,
        deadline=deadline,
        preemptions=preemptions,
        resumable=resumable,
    )


def view(
    slots: int,
    holders: Iterable[Holder] = (),
    waiting: Iterable[Candidate] = (),
    counters: Mapping[TenantKey, float] | None = None,
    now: float = NOW,
) -> PoolView:
    return PoolView("llama3:latest", slots, tuple(holders), tuple(waiting), counters or {}, now)


def many(prefix: str, n: int, cls: Priority = S, tenant: str = "t", **kw: Any) -> list[Holder]:
    """``n`` holders ``prefix0`` … of one class and tenant."""
    return [holder(f"{prefix}{i}", cls, tenant, **kw) for i in range(n)]


def waiting(
    prefix: str, n: int, cls: Priority = S, tenant: str = "t", **kw: Any
) -> list[Candidate]:
    """``n`` candidates ``prefix0`` … of one class and tenant, arriving in that order."""
    return [cand(f"{prefix}{i}", cls, tenant, arrival=float(i), **kw) for i in range(n)]
