"""The scheduler's board kept from the store: its changes and reads applied in order (pure).

With shared state every replica's :class:`~.board.Board` is fleet-wide: the
store keeps the board (``scripts.py`` says where), every script that changes it
lists its changes in the event it publishes (the event's ``b`` field, see
:class:`BoardChange`) and in its reply, and a refresh reads all of it
(:class:`BoardRefresh`).  :class:`BoardMirror` applies both to a
:class:`~.board.BoardBook`, as :class:`~.mirror.Mirror` does for the counts:

* every change carries the fleet-wide sequence number of the script that made
  it; per entry (a holder, a waiting request, a counter, a promise, a reclaim
  mark) only a newer change applies, so this replica's own reply and the same
  change arriving later as an event apply once;
* a refresh at sequence R contains every change up to R: afterwards changes
  numbered R or less are ignored, and an entry changed after R keeps its newer
  value.  The numbers seen up to R are then forgotten, so the bookkeeping stays
  as small as the changes in flight;
* a store that lost its data (restarted empty, flushed) starts a new **epoch**
  (a value the refresh script sets when it is missing): its sequence numbers
  start again, so the mirror forgets the old ones and takes the read as it is —
  except the fair-share counters, which nobody else can give back: this
  replica keeps the values it last saw and re-asserts them (``BoardMirror``
  says so through :meth:`apply_refresh`'s answer).

Server times (ms) become local clock values through the caller's ``to_local``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..priority import parse_priority
from .board import BoardBook, CounterKey, Reservation, holder_of, waiter_of
from .model import SEP, SlotFreed

__all__ = [
    "BoardChange",
    "BoardEffects",
    "BoardMirror",
    "BoardRefresh",
    "counter_field",
    "counter_key",
    "parse_board_refresh",
    "parse_changes",
]

ToLocal = Callable[[int], float]

_NO_DOC: Mapping[str, Any] = MappingProxyType({})

#: What a change does, by kind: ``i`` names a lease's member (hold, unhold, fb), a request
#: (wait, unwait, promise, unpromise) or a counter's field (fair).
KINDS = frozenset({"hold", "unhold", "fb", "wait", "unwait", "fair", "promise", "unpromise"})


def counter_field(key: CounterKey) -> str:
    """The store's field of a fair-share counter: ``model|class|tenant``."""
    model, cls, tenant = key
    return f"{model}{SEP}{cls.value}{SEP}{tenant}"


def counter_key(field: str) -> CounterKey | None:
    # Model names and classes never hold the separator; a tenant's name may.
    parts = field.split(SEP, 2)
    if len(parts) != 3:
        return None
    try:
        return (parts[0], parse_priority(parts[1]), parts[2])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class BoardChange:
    """One change of the board, as a script reports it (JSON ``{"k", "i", "d", "v"}``).

    ``doc`` is a holder's or a waiting request's store document (``board.holder_doc``,
    ``board.waiter_doc``), a promise (``p`` pod, ``m`` model, ``v`` victim, ``u`` until
    ms), or, on an ``unpromise`` that gave a seat back, the seat (``p``, ``m``, ``h``
    held).  ``value`` is a counter's value (fair) or a first byte's server ms (fb).
    """

    kind: str
    id: str
    doc: Mapping[str, Any] = field(default_factory=lambda: _NO_DOC)
    value: float = 0.0


def parse_changes(raw: Any) -> tuple[BoardChange, ...]:
    """The changes of an event's ``b`` field; anything malformed is left out (never raises)."""
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        kind, ident, doc = item.get("k"), item.get("i"), item.get("d")
        if kind not in KINDS or not isinstance(ident, str):
            continue
        try:
            value = float(item.get("v", 0.0))
        except (TypeError, ValueError):
            continue
        out.append(BoardChange(str(kind), ident, doc if isinstance(doc, dict) else _NO_DOC, value))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class BoardRefresh:
    """The reply of the ``board`` script, parsed (documents still in server times).

    Holder and waiter documents stay JSON text (a document may also be given parsed): most
    are the same at every refresh, and the mirror parses only those that changed."""

    now_ms: int
    seq: int
    epoch: str
    holders: Mapping[str, str | Mapping[str, Any]]
    waiters: Mapping[str, str | Mapping[str, Any]]
    counters: Mapping[CounterKey, float]
    promises: Mapping[str, Mapping[str, Any]]
    reclaiming: frozenset[str]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _texts(flat: Any) -> dict[str, str]:
    items = [_text(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _doc(raw: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(raw, str):
        return raw
    try:
        doc = json.loads(raw)
    except ValueError:
        return _NO_DOC
    return doc if isinstance(doc, dict) else _NO_DOC


def _docs(flat: Any) -> dict[str, Mapping[str, Any]]:
    return {name: _doc(raw) for name, raw in _texts(flat).items()}


def parse_board_refresh(reply: Any) -> BoardRefresh:
    now_ms, seq, epoch, holders, waiters, counters, promises, reclaiming = reply
    values: dict[CounterKey, float] = {}
    items = [_text(x) for x in counters]
    for f, v in zip(items[::2], items[1::2], strict=True):
        key = counter_key(f)
        try:
            value = float(v)
        except ValueError:
            continue
        if key is not None and math.isfinite(value):
            values[key] = value
    return BoardRefresh(
        now_ms=int(now_ms),
        seq=int(seq),
        epoch=_text(epoch),
        holders=_texts(holders),
        waiters=_texts(waiters),
        counters=values,
        promises=_docs(promises),
        reclaiming=frozenset(_text(m) for m in reclaiming),
    )


def _reservation(beneficiary: str, doc: Mapping[str, Any], to_local: ToLocal) -> Reservation | None:
    try:
        return Reservation(
            beneficiary=beneficiary,
            pod=str(doc["p"]),
            model=str(doc["m"]),
            victim=str(doc["v"]),
            until=to_local(int(doc["u"])),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(slots=True)
class BoardEffects:
    """What applying changes means beyond the board: seats given back, leases to take back."""

    freed: list[SlotFreed] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)
    """Members newly marked as being taken back (their replica preempts them)."""


class BoardMirror:
    """A :class:`BoardBook` fed by the store's board changes and refreshes."""

    def __init__(self) -> None:
        self.book = BoardBook()
        self.floor = -1
        """The sequence number of the last refresh applied: nothing older applies."""
        self.epoch: str | None = None
        self._seq: dict[tuple[str, Any], int] = {}
        #: The document text each holder and waiter was last read from, by entry.
        self._texts: dict[tuple[str, str], str] = {}

    def _newer(self, what: tuple[str, Any], seq: int) -> bool:
        if seq <= self.floor or seq <= self._seq.get(what, -1):
            return False
        self._seq[what] = seq
        return True

    def apply(self, seq: int, changes: tuple[BoardChange, ...], to_local: ToLocal) -> BoardEffects:
        """Apply one script's changes (numbered ``seq``) once."""
        effects = BoardEffects()
        book = self.book
        for c in changes:
            if c.kind == "hold":
                h = holder_of(c.id, c.doc, to_local)
                if h is not None and self._newer(("h", c.id), seq):
                    book.put_holder(h)
                    # the request has its slot: it no longer waits, its promise is used
                    if self._newer(("w", h.request_id), seq):
                        book.unwait(h.request_id)
                    if self._newer(("p", h.request_id), seq):
                        book.unreserve(h.request_id)
            elif c.kind == "unhold":
                if self._newer(("h", c.id), seq):
                    book.release(c.id)
                self._newer(("k", c.id), seq)  # a reclaim mark goes with its lease
            elif c.kind == "fb":
                if self._newer(("h", c.id), seq):
                    book.first_byte(c.id, to_local(int(c.value)))
            elif c.kind == "wait":
                w = waiter_of(c.id, c.doc, to_local)
                if w is not None and self._newer(("w", c.id), seq):
                    book.wait(w)
            elif c.kind == "unwait":
                if self._newer(("w", c.id), seq):
                    book.unwait(c.id)
            elif c.kind == "fair":
                key = counter_key(c.id)
                if key is not None and self._newer(("c", key), seq):
                    book.set_counter(key, c.value)
            elif c.kind == "promise":
                r = _reservation(c.id, c.doc, to_local)
                if r is None:
                    continue
                if self._newer(("p", c.id), seq):
                    book.promise(r)
                if self._newer(("k", r.victim), seq):
                    book.mark_reclaiming(r.victim)
                    effects.reclaimed.append(r.victim)
            elif c.kind == "unpromise" and self._newer(("p", c.id), seq):
                book.unreserve(c.id)
                if "p" in c.doc:
                    seat = c.doc
                    effects.freed.append(
                        SlotFreed(str(seat["p"]), str(seat.get("m", "")), int(seat.get("h", 0)), 0)
                    )
        return effects

    def apply_refresh(self, r: BoardRefresh, to_local: ToLocal) -> bool:
        """Take a full read; entries changed after it keep their newer value.

        Returns True when the store started a new epoch (it lost its data): the counters
        this replica last saw are kept, to be re-asserted."""
        restarted = self.epoch is not None and r.epoch != self.epoch
        if restarted:
            self._seq.clear()
        elif r.seq < self.floor:
            return False  # an older read than one applied already
        self.epoch = r.epoch
        book = self.book
        before = book.board()

        def untouched(what: tuple[str, Any]) -> bool:
            return self._seq.get(what, -1) <= r.seq

        texts: dict[tuple[str, str], str] = {}

        def unchanged(what: tuple[str, str], raw: str | Mapping[str, Any]) -> bool:
            """The same text as at the last read: the entry already holds it."""
            if not isinstance(raw, str):
                return False
            texts[what] = raw
            return self._texts.get(what) == raw

        for m in set(before.holders) | set(r.holders):
            if not untouched(("h", m)):
                continue
            if m in r.holders and unchanged(("h", m), r.holders[m]) and m in before.holders:
                continue
            h = holder_of(m, _doc(r.holders[m]), to_local) if m in r.holders else None
            if h is not None:
                book.put_holder(h)
            else:
                book.release(m)
        for m in before.reclaiming | r.reclaiming:
            marked = m in (r.reclaiming if untouched(("k", m)) else before.reclaiming)
            book.mark_reclaiming(m, marked and book.holder(m) is not None)
        for q in set(before.waiters) | set(r.waiters):
            if not untouched(("w", q)):
                continue
            if q in r.waiters and unchanged(("w", q), r.waiters[q]) and q in before.waiters:
                continue
            w = waiter_of(q, _doc(r.waiters[q]), to_local) if q in r.waiters else None
            if w is not None:
                book.wait(w)
            else:
                book.unwait(q)
        for b in set(before.reservations) | set(r.promises):
            if untouched(("p", b)):
                res = _reservation(b, r.promises[b], to_local) if b in r.promises else None
                if res is not None:
                    book.promise(res)
                else:
                    book.unreserve(b)
        for key in set(before.counters) | set(r.counters):
            if key in r.counters and untouched(("c", key)):
                mine = before.counters.get(key, -math.inf) if restarted else -math.inf
                book.set_counter(key, max(mine, r.counters[key]))
        if not restarted:  # a counter the store dropped (expired) is gone
            book.forget_counters(
                {*r.counters, *(k for k in before.counters if not untouched(("c", k)))}
            )
        self._seq = {k: s for k, s in self._seq.items() if s > r.seq}
        self._texts = texts
        self.floor = r.seq
        return restarted
