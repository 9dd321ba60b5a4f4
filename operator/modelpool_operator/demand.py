"""Per-model demand from the balancer, averaged over a window (pure).

The balancer's ``GET /-/fleet`` carries ``"demand": {model: requests in flight + queued}``
for the replica that answers.  Queued requests are always a replica's own, so the
fleet's demand is the **sum over every balancer replica**, with or without shared state
(:func:`sum_fleet`).  The replicas are the ready addresses of the balancer's ops Service
(:func:`endpoint_urls`), or fixed URLs.

One poll is a noisy instant (a burst of short requests comes and goes between two
polls), so decisions use the mean of the polls of the last ``window`` seconds
(:class:`DemandWindow`), a model absent from a poll counting 0 there.  A poll that did not
reach *every* replica is a failure, not a smaller sum (an under-count would scale down
for nothing); while the latest poll failed, or no poll of the window succeeded, demand is
**unknown** and no count changes (:func:`.scaling.step`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_wire.hosts import endpoint_url
from ollama_wire.names import InvalidModelName, canonical

__all__ = ["DemandReading", "DemandWindow", "endpoint_urls", "parse_demand", "sum_fleet"]


@dataclass(frozen=True, slots=True)
class DemandReading:
    """Averaged demand per model key (canonical names), or why it is unknown."""

    known: bool
    demand: Mapping[str, float] = field(default_factory=dict)
    error: str = ""
    #: polls averaged
    samples: int = 0
    #: no poll has been made yet (unknown, but nothing to warn about)
    pending: bool = False

    def of(self, key: str) -> float | None:
        return self.demand.get(key, 0.0) if self.known else None


UNCONFIGURED = DemandReading(
    False, error="no balancer configured (--balancer-service or --balancer-url)"
)


def parse_demand(doc: object) -> dict[str, float]:
    """``/-/fleet``'s ``demand`` map by model key; raises ValueError when it has none."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("demand"), Mapping):
        raise ValueError("no demand map in /-/fleet (a balancer older than autoscaling?)")
    out: dict[str, float] = {}
    for name, value in doc["demand"].items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            continue
        try:
            key = canonical(str(name))
        except InvalidModelName:
            continue
        out[key] = out.get(key, 0.0) + float(value)
    return out


def sum_fleet(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The fleet's demand: every replica's own, added up."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


def endpoint_urls(endpoints: Mapping[str, Any], port: str = "") -> list[str]:
    """Base URLs of the ready addresses of a v1 Endpoints object.

    ``port``: a port name or number; empty = the port named ``ops`` (the balancer's
    metrics and fleet view), else ``http``, else the subset's only port.
    """
    urls: list[str] = []
    for subset in endpoints.get("subsets") or ():
        ports = [p for p in subset.get("ports") or () if isinstance(p, Mapping)]
        number = _pick_port(ports, port)
        if number is None:
            continue
        for address in subset.get("addresses") or ():
            ip = address.get("ip") if isinstance(address, Mapping) else None
            if isinstance(ip, str) and ip:
                urls.append(endpoint_url(ip, number))
    return sorted(set(urls))


def _pick_port(ports: list[Mapping[str, Any]], wanted: str) -> int | None:
    def number(p: Mapping[str, Any]) -> int | None:
        n = p.get("port")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    if wanted.isdigit():
        return int(wanted) if any(number(p) == int(wanted) for p in ports) else None
    names = [wanted] if wanted else ["ops", "http"]
    for name in names:
        for p in ports:
            if p.get("name") == name:
                return number(p)
    if not wanted and len(ports) == 1:
        return number(ports[0])
    return None


@dataclass(frozen=True, slots=True)
class _Poll:
    at: float
    demand: Mapping[str, float] | None  # None: failed
    error: str = ""


class DemandWindow:
    """The polls of the last ``window`` seconds and their mean."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._polls: deque[_Poll] = deque()

    def add(self, at: float, demand: Mapping[str, float] | None, error: str = "") -> None:
        self._polls.append(_Poll(at, dict(demand) if demand is not None else None, error))
        self._trim(at)

    def _trim(self, now: float) -> None:
        # Keep the newest poll whatever its age: it says whether the source answers.
        while len(self._polls) > 1 and self._polls[0].at < now - self.window:
            self._polls.popleft()

    def reading(self, now: float) -> DemandReading:
        self._trim(now)
        if not self._polls:
            return DemandReading(False, error="no poll yet", pending=True)
        last = self._polls[-1]
        if last.demand is None:
            return DemandReading(False, error=last.error or "the last poll failed")
        good = [p.demand for p in self._polls if p.demand is not None and p.at >= now - self.window]
        if not good:
            return DemandReading(False, error=f"no poll within the last {self.window:g}s")
        keys = {k for d in good for k in d}
        mean = {k: math.fsum(d.get(k, 0.0) for d in good) / len(good) for k in keys}
        return DemandReading(True, mean, samples=len(good))
