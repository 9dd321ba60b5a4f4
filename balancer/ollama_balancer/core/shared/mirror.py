"""The mirror of the shared counts, which hands out the fleet-wide occupancy (pure: no I/O).

Every replica keeps a **mirror** of the shared counts in memory, so routing
stays a pure, synchronous function and costs no round trip (it reads
:meth:`Mirror.occupancy`, an :class:`~ollama_balancer.core.occupancy.Occupancy`
value with ``fleet_wide`` set, rebuilt only after a change):

* every change (acquire, release, reclaim, load start/end, penalty) is
  published by the server-side script that made it, with a fleet-wide
  sequence number; the mirror applies events in the order of those numbers;
* the reply of this replica's own acquire/release carries the same numbers
  and is applied at once (no need to wait for its own event);
* a periodic refresh (one script, one round trip) reads everything, reclaims
  expired leases and corrects what events cannot say (expiry, a missed
  message during a reconnect).

Per entry, the highest sequence number seen wins, so a refresh whose reply
arrives after a newer event never rolls the entry back.  Server times (ms,
Redis ``TIME``) become local clock values through the offset measured at each
refresh, so clock skew between replicas does not matter.

The scheduler's board travels on the same events (their ``b`` field) and is
kept by :attr:`Mirror.board`, a :class:`~.boardmirror.BoardMirror`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..occupancy import LoadRecord, Occupancy
from .boardmirror import BoardChange, BoardMirror, parse_changes
from .model import LeaseKey, SlotFreed, key_of_field

__all__ = ["Event", "Mirror", "Refresh", "parse_event", "parse_refresh"]

#: How long a finished load still counts as resident before polls catch up (seconds).
LOADED_MEMORY = 120.0


@dataclass(frozen=True, slots=True)
class Event:
    """One message of the events channel (see ``scripts.py`` for who sends which)."""

    #: acq | rel | rec | load | loaded | unload | forget | pen | unpen | aff | unlock | board
    kind: str
    seq: int
    t: int  # server time, ms
    pod: str = ""
    model: str = ""
    held: int = 0
    slots: int = 0
    member: str = ""
    until: int = 0
    key: str = ""
    board: tuple[BoardChange, ...] = ()
    """Changes of the scheduler's board made by the same script (any kind may carry them)."""


def parse_event(data: bytes | str) -> Event | None:
    """An event from its JSON text; None for anything malformed (never raises)."""
    try:
        doc = json.loads(data)
        return Event(
            kind=str(doc["k"]),
            seq=int(doc.get("s", 0)),
            t=int(doc.get("t", 0)),
            pod=str(doc.get("p", "")),
            model=str(doc.get("m", "")),
            held=int(doc.get("h", 0)),
            slots=int(doc.get("n", 0)),
            member=str(doc.get("r", "")),
            until=int(doc.get("u", 0)),
            key=str(doc.get("a", "")),
            board=parse_changes(doc.get("b")),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


@dataclass(frozen=True, slots=True)
class Refresh:
    """The reply of the ``snapshot`` script, parsed."""

    now_ms: int
    seq: int
    reclaimed: int
    held: dict[LeaseKey, int]
    loads: dict[LeaseKey, tuple[str, int]]  # member, started ms
    loaded: dict[LeaseKey, int]
    penalties: dict[str, int]
    load_times: dict[str, float]
    service_times: dict[str, float]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _pairs(flat: Any) -> list[tuple[str, str]]:
    items = [_text(x) for x in flat]
    return list(zip(items[::2], items[1::2], strict=True))


def parse_refresh(reply: Any) -> Refresh:
    now_ms, seq, reclaimed, held, loads, loaded, pens, lt, st = reply
    load_map: dict[LeaseKey, tuple[str, int]] = {}
    for f, raw in _pairs(loads):
        doc = json.loads(raw)
        load_map[key_of_field(f)] = (str(doc["r"]), int(doc["t"]))
    return Refresh(
        now_ms=int(now_ms),
        seq=int(seq),
        reclaimed=int(reclaimed),
        held={key_of_field(f): int(n) for f, n in _pairs(held)},
        loads=load_map,
        loaded={key_of_field(f): int(t) for f, t in _pairs(loaded)},
        penalties={p: int(u) for p, u in _pairs(pens)},
        load_times={m: float(v) for m, v in _pairs(lt)},
        service_times={m: float(v) for m, v in _pairs(st)},
    )


class Mirror:
    """This replica's copy of the shared counts, fed by events, replies and refreshes."""

    def __init__(
        self,
        clock: Callable[[], float],
        default_load_seconds: float = 20.0,
        default_service_seconds: float = 5.0,
    ) -> None:
        self.clock = clock
        self.defaults = (default_load_seconds, default_service_seconds)
        self.offset = 0.0  # server seconds - local clock
        self.synced = False  # a refresh was applied since the last reset
        self._offset_known = False
        self._seq: dict[tuple[str, Any], int] = {}
        self._held: dict[LeaseKey, int] = {}
        self._loads: dict[LeaseKey, LoadRecord] = {}
        self._loaded: dict[LeaseKey, float] = {}
        self._penalties: dict[str, float] = {}
        self._load_times: dict[str, float] = {}
        self._service_times: dict[str, float] = {}
        self._cached: Occupancy | None = None
        #: The scheduler's board, fleet-wide.
        self.board = BoardMirror()

    def reset(self) -> None:
        """Forget everything (the store was lost: its counts are unknown until a refresh)."""
        self.__init__(self.clock, *self.defaults)  # type: ignore[misc]

    # ---- reads
    def occupancy(self) -> Occupancy:
        if self._cached is None:
            self._cached = Occupancy(
                held=dict(self._held),
                loads=dict(self._loads),
                loaded=dict(self._loaded),
                penalties=dict(self._penalties),
                load_times=dict(self._load_times),
                service_times=dict(self._service_times),
                default_load_seconds=self.defaults[0],
                default_service_seconds=self.defaults[1],
                fleet_wide=True,
            )
        return self._cached

    def held(self, key: LeaseKey) -> int:
        return self._held.get(key, 0)

    def local_time(self, server_ms: int) -> float:
        return server_ms / 1000.0 - self.offset

    # ---- writes
    def _newer(self, what: tuple[str, Any], seq: int, *, strict: bool = True) -> bool:
        # Events (and this replica's own replies, which carry the same numbers) apply
        # once: strictly newer only.  A refresh at sequence S already contains S.
        last = self._seq.get(what, -1)
        if seq < last or (strict and seq == last):
            return False
        self._seq[what] = seq
        self._cached = None
        return True

    def apply_held(self, key: LeaseKey, held: int, seq: int, *, strict: bool = True) -> bool:
        if not self._newer(("h", key), seq, strict=strict):
            return False
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        return True

    def apply_event(self, ev: Event) -> SlotFreed | None:
        """Apply one event once; returns the slot-freed signal it carries, if any."""
        if not self._offset_known and ev.t > 0:
            # Until a refresh measures it, the first event's server time is "now" give or
            # take its trip: times converted meanwhile stay within that of the truth.
            self.offset = ev.t / 1000.0 - self.clock()
            self._offset_known = True
        key = (ev.pod, ev.model)
        if ev.kind in ("acq", "rel", "rec"):
            fresh = self.apply_held(key, ev.held, ev.seq)
            if ev.kind == "acq" and ev.member and self._newer(("l", key), ev.seq):
                self._loads[key] = LoadRecord(self.local_time(ev.t), ev.member)
            if ev.kind != "acq":
                if ev.member and self._newer(("l", key), ev.seq):
                    # The load this request owned ended with it (Ollama aborts it).
                    self._loads.pop(key, None)
                if fresh:
                    return SlotFreed(ev.pod, ev.model, ev.held, ev.slots, ev.kind == "rec")
        elif ev.kind in ("loaded", "unload"):
            if self._newer(("l", key), ev.seq):
                self._loads.pop(key, None)
                if ev.kind == "loaded":
                    self._loaded[key] = self.local_time(ev.t)
        elif ev.kind == "forget":
            self._loaded.pop(key, None)  # a finished load's copy was unloaded
            self._cached = None
        elif ev.kind == "pen":
            if self._newer(("p", ev.pod), ev.seq):
                self._penalties[ev.pod] = self.local_time(ev.until)
        elif ev.kind == "unpen" and self._newer(("p", ev.pod), ev.seq):
            self._penalties.pop(ev.pod, None)
        return None

    def apply_refresh(self, r: Refresh) -> list[SlotFreed]:
        """Take a full read; entries changed by a newer event keep the newer value.

        Returns a signal for every count that went down (leases reclaimed from a dead
        replica, or releases whose events this replica missed)."""
        self.offset = r.now_ms / 1000.0 - self.clock()
        self._offset_known = True
        freed: list[SlotFreed] = []
        for key in set(self._held) | set(r.held):
            before, after = self._held.get(key, 0), r.held.get(key, 0)
            if self.apply_held(key, after, r.seq, strict=False) and after < before:
                freed.append(SlotFreed(key[0], key[1], after, 0, reclaimed=True))
        for key in set(self._loads) | set(r.loads):
            if self._newer(("l", key), r.seq, strict=False):
                if key in r.loads:
                    member, started = r.loads[key]
                    self._loads[key] = LoadRecord(self.local_time(started), member)
                else:
                    self._loads.pop(key, None)
        horizon = self.clock() - LOADED_MEMORY
        self._loaded = {k: t for k, t in self._loaded.items() if t > horizon and k not in r.loaded}
        self._loaded.update({k: self.local_time(t) for k, t in r.loaded.items()})
        for pod in set(self._penalties) | set(r.penalties):
            if self._newer(("p", pod), r.seq, strict=False):
                if pod in r.penalties:
                    self._penalties[pod] = self.local_time(r.penalties[pod])
                else:
                    self._penalties.pop(pod, None)
        self._load_times = dict(r.load_times)
        self._service_times = dict(r.service_times)
        self._cached = None
        self.synced = True
        return freed
