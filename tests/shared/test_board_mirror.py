"""The board's mirror as tables: the store's board changes and reads applied in order, once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from ollama_balancer.core.priority import Priority
from ollama_balancer.core.shared.board import (
    CounterKey,
    SlotHolder,
    Waiter,
    holder_doc,
    waiter_doc,
)
from ollama_balancer.core.shared.boardmirror import (
    BoardChange,
    BoardMirror,
    BoardRefresh,
    counter_field,
    counter_key,
    parse_changes,
)
from ollama_balancer.core.shared.mirror import Event, Mirror, parse_event
from ollama_balancer.core.shared.model import SlotFreed

KEY: CounterKey = ("m", Priority.BATCH, "heavy")
FIELD = counter_field(KEY)


def to_local(ms: int) -> float:
    return ms / 1000.0  # the server's clock is the local one here


def hold(member: str, request_id: str = "q1") -> BoardChange:
    h = SlotHolder(member, "p", "m", "r1", request_id, cls=Priority.BATCH, tenant="heavy")
    return BoardChange("hold", member, holder_doc(h, 1_000))


def wait(request_id: str) -> BoardChange:
    w = Waiter(request_id, "m", "r2", tenant="light")
    return BoardChange("wait", request_id, waiter_doc(w, 2_000, None))


def promise(beneficiary: str, victim: str) -> BoardChange:
    return BoardChange("promise", beneficiary, {"p": "p", "m": "m", "v": victim, "u": 9_000})


def fair(value: float) -> BoardChange:
    return BoardChange("fair", FIELD, value=value)


def refresh(seq: int, epoch: str = "e1", **kw: Any) -> BoardRefresh:
    docs: dict[str, Any] = {
        "holders": {},
        "waiters": {},
        "counters": {},
        "promises": {},
        "reclaiming": frozenset(),
    }
    docs.update(kw)
    return BoardRefresh(now_ms=5_000, seq=seq, epoch=epoch, **docs)


def held_doc(member: str, request_id: str = "q1") -> Mapping[str, Any]:
    return hold(member, request_id).doc


Step = tuple[int, tuple[BoardChange, ...]] | BoardRefresh


@pytest.mark.parametrize(
    ("steps", "holders", "waiters", "counter", "promises", "reclaiming"),
    [
        pytest.param(
            [(1, (hold("a"),)), (2, (wait("q2"),)), (3, (fair(4.0),))],
            {"a"},
            {"q2"},
            4.0,
            set(),
            set(),
            id="in order",
        ),
        pytest.param(
            [(1, (wait("q1"), promise("q1", "v"))), (2, (hold("a", "q1"),))],
            {"a"},
            set(),
            None,
            set(),
            {"v"},
            id="a hold ends the request's wait and uses its promise; the victim stays marked",
        ),
        pytest.param(
            [(1, (hold("a"),)), (2, (promise("q9", "a"),)), (3, (BoardChange("unhold", "a"),))],
            set(),
            set(),
            None,
            {"q9"},
            set(),
            id="a release takes the reclaim mark with it; the promise stays for its seat",
        ),
        pytest.param(
            [(2, (fair(5.0),)), (1, (fair(3.0),))],
            set(),
            set(),
            5.0,
            set(),
            set(),
            id="a late change is ignored",
        ),
        pytest.param(
            [refresh(5, holders={"a": held_doc("a")}), (4, (BoardChange("unhold", "a"),))],
            {"a"},
            set(),
            None,
            set(),
            set(),
            id="a change older than a refresh is ignored",
        ),
        pytest.param(
            [(6, (BoardChange("unhold", "a"),)), refresh(5, holders={"a": held_doc("a")})],
            set(),
            set(),
            None,
            set(),
            set(),
            id="a refresh older than a change keeps the change",
        ),
        pytest.param(
            [(1, (hold("a"), wait("q2"), fair(2.0))), refresh(5)],
            set(),
            set(),
            None,
            set(),
            set(),
            id="a refresh removes what the store no longer has",
        ),
        pytest.param(
            [refresh(8, counters={KEY: 7.0}), refresh(6, counters={KEY: 1.0})],
            set(),
            set(),
            7.0,
            set(),
            set(),
            id="an older read than one applied is ignored",
        ),
        pytest.param(
            [
                refresh(8, holders={"a": held_doc("a")}, counters={KEY: 7.0}),
                refresh(2, epoch="e2", waiters={"q2": wait("q2").doc}, counters={KEY: 1.0}),
                (3, (hold("b"),)),
            ],
            {"b"},
            {"q2"},
            7.0,
            set(),
            set(),
            id="a new epoch: numbers start again, the read is taken, counters kept",
        ),
        pytest.param(
            [
                refresh(3, holders={"a": held_doc("a")}, reclaiming=frozenset({"a", "gone"})),
            ],
            {"a"},
            set(),
            None,
            set(),
            {"a"},
            id="a refresh marks only leases it knows",
        ),
    ],
)
def test_board_mirror_applies_the_newest(
    steps: list[Step],
    holders: set[str],
    waiters: set[str],
    counter: float | None,
    promises: set[str],
    reclaiming: set[str],
) -> None:
    mirror = BoardMirror()
    for step in steps:
        if isinstance(step, BoardRefresh):
            mirror.apply_refresh(step, to_local)
        else:
            mirror.apply(step[0], step[1], to_local)
    board = mirror.book.board()
    assert set(board.holders) == holders
    assert set(board.waiters) == waiters
    assert board.counters.get(KEY) == counter
    assert set(board.reservations) == promises
    assert board.reclaiming == reclaiming


def test_own_reply_and_event_apply_once() -> None:
    """The reclaiming replica applies its reply, then hears the same event: one preemption."""
    mirror = BoardMirror()
    mirror.apply(1, (hold("a"),), to_local)
    first = mirror.apply(2, (promise("q9", "a"),), to_local)
    again = mirror.apply(2, (promise("q9", "a"),), to_local)
    assert first.reclaimed == ["a"] and again.reclaimed == []
    freed = mirror.apply(
        3, (BoardChange("unpromise", "q9", {"p": "p", "m": "m", "h": 1}),), to_local
    )
    assert freed.freed == [SlotFreed("p", "m", 1, 0)]
    used = mirror.apply(4, (BoardChange("unpromise", "q8"),), to_local)
    assert used.freed == []  # a promise used by its beneficiary frees no seat


def test_refresh_reports_a_new_epoch_and_keeps_the_higher_counter() -> None:
    mirror = BoardMirror()
    assert not mirror.apply_refresh(refresh(4, counters={KEY: 7.0}), to_local)
    assert mirror.apply_refresh(refresh(1, epoch="e2", counters={KEY: 9.0}), to_local)
    assert mirror.book.board().counters == {KEY: 9.0}
    assert mirror.floor == 1


def test_bookkeeping_is_forgotten_at_each_refresh() -> None:
    mirror = BoardMirror()
    for seq in range(1, 50):
        mirror.apply(seq, (hold(f"m{seq}"), BoardChange("unhold", f"m{seq}")), to_local)
    mirror.apply_refresh(refresh(49), to_local)
    assert mirror._seq == {}


def test_times_are_converted_to_the_local_clock() -> None:
    mirror = BoardMirror()
    mirror.apply(1, (hold("a"),), lambda ms: ms / 1000.0 - 50.0)
    mirror.apply(2, (BoardChange("fb", "a", value=3_000),), lambda ms: ms / 1000.0 - 50.0)
    h = mirror.book.board().holders["a"]
    assert (h.started, h.first_byte) == (-49.0, -47.0)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "text",
        [1, "x", None],
        [{"k": "nope", "i": "a"}],
        [{"k": "fair", "i": 3}],
        [{"k": "fair", "i": "m|batch|t", "v": "x"}],
    ],
    ids=["none", "text", "not objects", "unknown kind", "id not text", "value not a number"],
)
def test_parse_changes_leaves_out_what_is_malformed(raw: object) -> None:
    assert parse_changes(raw) == ()


def test_an_event_carries_its_board_changes() -> None:
    ev = parse_event(
        b'{"k":"rel","s":7,"t":1,"p":"a","m":"m","h":0,"n":2,'
        b'"b":[{"k":"unhold","i":"r/q/1"},{"k":"fair","i":"m|batch|t","v":"2.5"}]}'
    )
    assert ev is not None
    assert ev.board == (BoardChange("unhold", "r/q/1"), BoardChange("fair", "m|batch|t", value=2.5))


@pytest.mark.parametrize(
    ("key", "field"),
    [
        pytest.param(("llama3:latest", Priority.CRITICAL, "-"), "llama3:latest|critical|-"),
        pytest.param(("m", Priority.BATCH, "a|b"), "m|batch|a|b", id="a tenant may hold |"),
    ],
)
def test_counter_fields(key: CounterKey, field: str) -> None:
    assert counter_field(key) == field
    assert counter_key(field) == key


@pytest.mark.parametrize("field", ["m|batch", "m|nope|t"], ids=["too short", "no such class"])
def test_counter_key_refuses(field: str) -> None:
    assert counter_key(field) is None


def test_a_refresh_parses_only_documents_that_changed() -> None:
    """Most documents are the same at every refresh (every second, per replica)."""
    mirror = BoardMirror()
    text = json.dumps(held_doc("a"))
    mirror.apply_refresh(refresh(1, holders={"a": text}), to_local)
    first = mirror.book.board().holders["a"]
    mirror.apply_refresh(refresh(2, holders={"a": text}), lambda ms: ms / 1000.0 + 1)
    assert mirror.book.board().holders["a"] is first  # not read again
    changed = json.dumps({**held_doc("a"), "f": 1_500})
    mirror.apply_refresh(refresh(3, holders={"a": changed}), to_local)
    assert mirror.book.board().holders["a"].first_byte == 1.5
    mirror.apply_refresh(refresh(4, holders={"a": "not json"}), to_local)
    assert "a" not in mirror.book.board().holders


def test_before_any_refresh_the_first_event_gives_the_clock_offset() -> None:
    """Events that arrive between subscribing and the first refresh land in local time too."""
    mirror = Mirror(clock=lambda: 100.0)
    ev = Event("board", 1, 50_000, board=(hold("a"),))  # the server says 50 s, we say 100 s
    mirror.apply_event(ev)
    mirror.board.apply(ev.seq, ev.board, mirror.local_time)
    assert mirror.board.book.board().holders["a"].started == 51.0  # started at server 1 s
