"""zstd request bodies as Ollama decodes them (kernel, pure; docs/anthropic.md §7)."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from ollama_wire.bodies import (
    MAX_DECODED_BYTES,
    MSG_TOO_LARGE,
    ZSTD_PATHS,
    BodyError,
    decode_zstd,
    decodes_zstd,
    request_body,
)

BODY = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'


def zstd(data: bytes, **params: int) -> bytes:
    if params:
        p = zstandard.ZstdCompressionParameters.from_level(3, **params)
        return zstandard.ZstdCompressor(compression_params=p).compress(data)
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("path", "encoding", "decoded"),
    [
        *(pytest.param(p, "zstd", True, id=p) for p in sorted(ZSTD_PATHS)),
        pytest.param("/api/chat", "zstd", False, id="native paths never decode"),
        pytest.param("/v1/models", "zstd", False, id="GET /v1/models is not behind the decoder"),
        pytest.param("/v1/messages", "ZSTD", False, id="the value is case-sensitive"),
        pytest.param("/v1/messages", "zstd, identity", False, id="a list is not zstd"),
        pytest.param("/v1/messages", "gzip", False, id="gzip is not decoded"),
        pytest.param("/v1/messages", None, False, id="no header"),
    ],
)
def test_which_requests_are_decoded(path: str, encoding: str | None, decoded: bool) -> None:
    assert decodes_zstd(path, encoding) is decoded
    raw = zstd(BODY)
    assert request_body(path, encoding, raw) == (BODY if decoded else raw)


def test_the_five_paths() -> None:
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    } == ZSTD_PATHS


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(zstd(BODY), BODY, id="one frame"),
        pytest.param(zstd(BODY[:10]) + zstd(BODY[10:]), BODY, id="concatenated frames"),
        pytest.param(b"", b"", id="empty stream is an empty body"),
        pytest.param(zstd(b""), b"", id="empty frame"),
        pytest.param(zstd(b" " * MAX_DECODED_BYTES), b" " * MAX_DECODED_BYTES, id="20 MiB fits"),
    ],
)
def test_decodes(data: bytes, expected: bytes) -> None:
    assert decode_zstd(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            zstd(b" " * (MAX_DECODED_BYTES + 1)), MSG_TOO_LARGE, id="one byte over 20 MiB"
        ),
        pytest.param(BODY, "invalid input: magic number mismatch", id="plain JSON"),
        pytest.param(gzip.compress(BODY), "invalid input: magic number mismatch", id="gzip"),
        pytest.param(zstd(BODY)[:-3], "unexpected EOF", id="cut-off frame"),
        pytest.param(zstd(BODY)[:2], "unexpected EOF", id="cut-off magic"),
        pytest.param(
            zstd(BODY) + b"garbage!", "invalid input: magic number mismatch", id="trailing junk"
        ),
        pytest.param(
            zstd(b"x" * (9 << 20), window_log=24), "window size exceeded", id="16 MiB window"
        ),
    ],
)
def test_refusals(data: bytes, message: str) -> None:
    with pytest.raises(BodyError) as err:
        decode_zstd(data)
    assert err.value.message == message and err.value.status == 400


def test_a_bomb_costs_at_most_the_limit() -> None:
    """64 MiB of zeros in a few KiB: refused after reading just past the limit."""
    bomb = zstd(bytes(64 << 20))
    assert len(bomb) < 8 * 1024
    with pytest.raises(BodyError, match="too large"):
        decode_zstd(bomb)
