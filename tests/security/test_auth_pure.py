"""Keys file parsing, constant-time lookup, model globs and rate buckets (pure)."""

from __future__ import annotations

import pytest

from ollama_balancer.auth import main
from ollama_balancer.core.auth import (
    ApiKey,
    AuthConfigError,
    KeyState,
    TokenBucket,
    hash_key,
    parse_keys,
    presented_key,
)
from ollama_balancer.core.queueing import Priority

H1 = hash_key("secret-1")
H2 = hash_key("secret-2")


def test_parse_and_lookup() -> None:
    table = parse_keys(
        f"""
keys:
  - name: alice
    key_sha256: {H1}
  - name: bob
    key_sha256: "sha256:{H2.upper()}"
    models: "llama3*"
    max_concurrent: 2
    requests_per_minute: 10
    tokens_per_minute: 1000
    admin: true
"""
    )
    assert [k.name for k in table.keys] == ["alice", "bob"]
    alice, bob = table.keys
    assert alice.models == ("*",) and not alice.admin
    assert bob.models == ("llama3*",) and bob.admin and bob.max_concurrent == 2
    assert table.lookup("secret-1") is alice
    assert table.lookup("secret-2") is bob
    assert table.lookup("secret-3") is None
    assert table.lookup("") is None
    assert table.lookup(H1) is None  # the hash itself is not a key


@pytest.mark.parametrize(
    "text, fragment",
    [
        pytest.param("keys: [1]", "expected a mapping", id="entry not a mapping"),
        pytest.param("keys:\n  - key_sha256: " + H1, "name is required", id="no name"),
        pytest.param("keys:\n  - name: a\n    key_sha256: abc", "64 hex", id="short hash"),
        pytest.param("keys:\n  - name: a\n    key: plain", "unknown field", id="plaintext key"),
        pytest.param(
            f"keys:\n  - name: a\n    key_sha256: {H1}\n  - name: b\n    key_sha256: {H1}",
            "twice",
            id="duplicate hash",
        ),
        pytest.param(
            f"keys:\n  - name: a\n    key_sha256: {H1}\n  - name: a\n    key_sha256: {H2}",
            "twice",
            id="duplicate name",
        ),
        pytest.param(
            f"keys:\n  - name: a\n    key_sha256: {H1}\n    max_concurrent: -1",
            "non-negative",
            id="negative limit",
        ),
        pytest.param(
            f"keys:\n  - name: a\n    key_sha256: {H1}\n    admin: yes please",
            "admin",
            id="admin not bool",
        ),
        pytest.param("keys: {a: 1}", "'keys' list", id="keys not a list"),
        pytest.param("[", "invalid YAML", id="bad yaml"),
    ],
)
def test_bad_keys_files(text: str, fragment: str) -> None:
    with pytest.raises(AuthConfigError, match=fragment) as info:
        parse_keys(text)
    assert "secret" not in str(info.value)


def test_empty_file_means_no_keys() -> None:
    assert parse_keys("").keys == ()
    assert parse_keys("keys: []").lookup("x") is None


@pytest.mark.parametrize(
    "globs, name, allowed",
    [
        pytest.param(("*",), "anything/at:all", True, id="star"),
        pytest.param(("llama3*",), "llama3.2:3b", True, id="prefix glob"),
        pytest.param(("llama3*",), "LLAMA3.2:3B", True, id="case-insensitive"),
        pytest.param(("llama3*",), "qwen2.5:7b", False, id="other model"),
        pytest.param(("llama3.2:3b",), "llama3.2:3b", True, id="exact"),
        pytest.param(("llama3.2",), "llama3.2", True, id="as sent"),
        pytest.param(("llama3.2:latest",), "llama3.2", True, id="display form"),
        pytest.param(("qwen2.5:*",), "library/qwen2.5:7b", True, id="namespace default"),
        pytest.param(("registry.ollama.ai/library/*",), "mistral", True, id="canonical form"),
        pytest.param(("mine/*",), "other/mine:x", False, id="namespace differs"),
        pytest.param(("llama3*",), "../llama3", False, id="path trick"),
    ],
)
def test_model_globs(globs: tuple[str, ...], name: str, allowed: bool) -> None:
    key = ApiKey("k", H1, models=globs)
    assert key.allows_model(name) is allowed


@pytest.mark.parametrize(
    "authorization, x_api_key, expected",
    [
        ("Bearer abc", None, "abc"),
        ("bearer   abc  ", None, "abc"),
        (None, "xyz", "xyz"),
        ("Basic abc", "xyz", "xyz"),
        ("Bearer ", None, None),
        ("Basic abc", None, None),
        (None, None, None),
        ("Bearer abc", "xyz", "abc"),
    ],
)
def test_presented_key(authorization: str | None, x_api_key: str | None, expected: str) -> None:
    assert presented_key(authorization, x_api_key) == expected


def test_token_bucket_refills_and_charges() -> None:
    b = TokenBucket(60)  # one per second, burst 60
    for _ in range(60):
        assert b.take(100.0) == 0.0
    assert b.take(100.0) == pytest.approx(1.0)
    assert b.take(100.5) == pytest.approx(0.5)
    assert b.take(101.0) == 0.0
    b.charge(101.0, 1000)  # debt floors at one minute
    assert b.level == -60.0
    assert b.wait(101.0) == pytest.approx(61.0)
    assert TokenBucket(0).take(0.0) == 0.0  # unlimited


def test_key_state_admits_and_refuses() -> None:
    key = ApiKey("k", H1, max_concurrent=1, requests_per_minute=2, tokens_per_minute=10)
    st = KeyState.for_key(key)
    assert st.admit(key, 0.0) is None
    refused = st.admit(key, 0.0)
    assert refused is not None and "concurrent" in refused[0] and refused[1] == 1
    st.inflight -= 1
    assert st.admit(key, 0.0) is None
    st.inflight -= 1
    refused = st.admit(key, 0.0)
    assert refused is not None and "request rate" in refused[0] and refused[1] == 30
    assert st.admit(key, 30.0) is None
    st.inflight -= 1
    st.tokens.charge(30.0, 25)  # debt floors at -10; +1 needed at 1/6 per s → 66 s
    refused = st.admit(key, 31.0)
    assert refused is not None and "token rate" in refused[0] and refused[1] == 66


def test_hash_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash", "secret-1"]) == 0
    assert capsys.readouterr().out.strip() == H1
    assert main([]) == 2


def test_priority_and_weight() -> None:
    table = parse_keys(
        f"keys:\n  - name: a\n    key_sha256: {H1}\n"
        f"  - name: b\n    key_sha256: {H2}\n    priority: Critical\n    weight: 2.5\n"
    )
    a, b = table.keys
    assert (a.priority, a.weight) == (Priority.STANDARD, 1.0)
    assert (b.priority, b.weight) == (Priority.CRITICAL, 2.5)


@pytest.mark.parametrize(
    "line, fragment",
    [
        pytest.param("priority: urgent", "priority: unknown priority 'urgent'", id="bad class"),
        pytest.param("weight: 0", "weight must be a positive number", id="zero weight"),
        pytest.param("weight: -1", "weight must be a positive number", id="negative weight"),
        pytest.param("weight: true", "weight must be a positive number", id="bool weight"),
        pytest.param("weight: heavy", "weight must be a positive number", id="text weight"),
        pytest.param("weight: .inf", "at most", id="infinite weight"),
    ],
)
def test_bad_priority_or_weight(line: str, fragment: str) -> None:
    with pytest.raises(AuthConfigError, match=fragment):
        parse_keys(f"keys:\n  - name: a\n    key_sha256: {H1}\n    {line}\n")
