"""Merging pods' progress streams into one (kernel, pure; docs/ollama.md §2.7)."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_wire.progress import ProgressMerge

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def layer(digest: str, total: int, completed: int = 0) -> dict[str, Any]:
    line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
    if completed:
        line["completed"] = completed
    return line


MANIFEST = {"status": "pulling manifest"}
VERIFY = {"status": "verifying sha256 digest"}
WRITE = {"status": "writing manifest"}
REMOVE = {"status": "removing unused layers"}
SUCCESS = {"status": "success"}


def single(total1: int = 100, total2: int = 10) -> list[dict[str, Any]]:
    """One Ollama's pull, as docs/ollama.md §2.7 describes it."""
    return [
        MANIFEST,
        layer(D1, total1),
        layer(D1, total1, 40),
        layer(D1, total1, total1),
        layer(D2, total2, total2),
        VERIFY,
        WRITE,
        SUCCESS,
    ]


def run(events: list[tuple[str, dict[str, Any] | str | None]]) -> tuple[list[Any], ProgressMerge]:
    """(pod, line) for a progress line; (pod, None) success; (pod, "text") an error."""
    merge = ProgressMerge(sorted({pod for pod, _ in events}))
    out: list[Any] = []
    for pod, line in events:
        if isinstance(line, dict):
            out += merge.add(pod, line)
        else:
            out += merge.finish(pod, line)
    return out, merge


def interleave(*streams: tuple[str, list[dict[str, Any]]]) -> list[Any]:
    """Round-robin the pods' lines (the order pods answer in does not matter)."""
    events: list[Any] = []
    longest = max(len(lines) for _, lines in streams)
    for i in range(longest):
        for pod, lines in streams:
            if i < len(lines):
                events.append((pod, lines[i]))
    return events


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    """Statuses without repeats in a row: what a user reads."""
    out: list[str] = []
    for line in lines:
        if not out or out[-1] != line["status"]:
            out.append(line["status"])
    return out


def test_one_pod_is_passed_through() -> None:
    out, merge = run([("a", line) for line in single()])
    assert out == single()[:-1]  # success is the caller's to write
    assert merge.finished and not merge.failures


def test_two_pods_report_each_status_once_with_one_copys_size() -> None:
    out, merge = run(interleave(("a", single()), ("b", single())))
    assert statuses(out) == [
        "pulling manifest",
        f"pulling {D1[7:19]}",
        f"pulling {D2[7:19]}",
        "verifying sha256 digest",
        "writing manifest",
    ]
    non_layers = [x["status"] for x in out if "digest" not in x]
    assert len(non_layers) == len(set(non_layers))  # once each
    assert max(x.get("total", 0) for x in out) == 100  # not 200
    assert max(x.get("completed", 0) for x in out if x.get("digest") == D1) == 100
    assert merge.finished


def test_the_slowest_pod_sets_the_bar() -> None:
    fast = single()
    slow = [MANIFEST, layer(D1, 100), layer(D1, 100, 10), layer(D1, 100, 70)]
    out, merge = run([("a", x) for x in fast] + [("b", x) for x in slow])
    # a is done: the merged stream is where b is, never ahead of it
    assert out[-1] == layer(D1, 100, 70)
    assert [x.get("completed", 0) for x in out if x.get("digest") == D1] == [0, 10, 70]
    assert not merge.finished
    more = merge.add("b", layer(D1, 100, 100)) + merge.add("b", layer(D2, 10, 10))
    more += merge.add("b", VERIFY) + merge.add("b", WRITE) + merge.add("b", SUCCESS)
    assert statuses(more) == [
        f"pulling {D1[7:19]}",
        f"pulling {D2[7:19]}",
        "verifying sha256 digest",
        "writing manifest",
    ]
    assert merge.finished


def test_nothing_before_every_pod_has_started() -> None:
    merge = ProgressMerge(["a", "b"])
    assert merge.add("a", MANIFEST) == [] and not merge.started
    assert merge.add("a", layer(D1, 100, 50)) == []
    assert merge.add("b", MANIFEST) == [MANIFEST] and merge.started


def test_a_status_only_one_pod_reports_is_still_reported_once() -> None:
    with_prune = [*single()[:-1], REMOVE, SUCCESS]
    out, _ = run(interleave(("a", with_prune), ("b", single())))
    assert [x["status"] for x in out].count("removing unused layers") == 1
    assert statuses(out)[-2:] == ["writing manifest", "removing unused layers"]


def test_a_blob_already_on_one_pod() -> None:
    have = [MANIFEST, layer(D1, 100, 100), layer(D2, 10, 10), VERIFY, WRITE, SUCCESS]
    out, _ = run(interleave(("a", have), ("b", single())))
    d1 = [x.get("completed", 0) for x in out if x.get("digest") == D1]
    assert d1 == sorted(d1) and d1[-1] == 100  # b's progress, never going back
    assert statuses(out).count("writing manifest") == 1


def test_a_failed_pod_stops_holding_the_others_back() -> None:
    events: list[Any] = [("a", MANIFEST), ("b", MANIFEST), ("b", "pull model manifest: boom")]
    events += [("a", x) for x in single()[1:]]
    out, merge = run(events)
    assert statuses(out) == statuses(single()[:-1])
    assert merge.finished and merge.failures == {"b": "pull model manifest: boom"}


@pytest.mark.parametrize("pods", [2, 3])
def test_lines_never_go_back(pods: int) -> None:
    streams = [(f"p{i}", single()) for i in range(pods)]
    out, _ = run(interleave(*streams))
    order = statuses(single()[:-1])
    positions = [order.index(x["status"]) for x in out]
    assert positions == sorted(positions)
    for digest in (D1, D2):
        done = [x.get("completed", 0) for x in out if x.get("digest") == digest]
        assert done == sorted(done)
