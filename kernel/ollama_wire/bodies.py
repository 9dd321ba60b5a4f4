"""Request bodies as Ollama reads them: ``Content-Encoding: zstd`` on the ``/v1`` inference
paths (pure; docs/ollama.md §7.3, docs/anthropic.md §7).

Ollama decodes zstd in ``cloudPassthroughMiddleware``, which sits in front of exactly
five routes; ``/api/*`` never decodes, so a zstd body there reaches the JSON decoder
raw (``invalid character '('``, the first byte of zstd's magic).  The trigger is the
header value **exactly** ``zstd`` (``ZSTD`` or ``zstd, identity`` are not decoded).
Limits: an 8 MiB decoder window and 20 MiB after decompression.  Every failure is a
400 in the **native** ``{"error": ...}`` shape, even on ``/v1/messages``, because the
Anthropic and OpenAI writers are installed only after this step.

The decoder is the ``zstandard`` package; its error texts are mapped onto those of
Ollama's decoder (klauspost/compress) where docs/anthropic.md §7 or that library names them.
"""

from __future__ import annotations

import io

import zstandard

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_WINDOW_BYTES",
    "MSG_TOO_LARGE",
    "ZSTD_PATHS",
    "BodyError",
    "decode_zstd",
    "decodes_zstd",
    "request_body",
]

#: The routes behind Ollama's zstd decoder (``server/routes.go:1916-1926``).
ZSTD_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
MAX_DECODED_BYTES = 20 << 20
"""``http.MaxBytesReader(…, 20<<20)`` around the decoder."""
MAX_WINDOW_BYTES = 8 << 20
"""``WithDecoderMaxMemory(8<<20)``: frames made with ``--long`` or larger windows fail."""
#: Go's ``http.MaxBytesReader`` error text.
MSG_TOO_LARGE = "http: request body too large"

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16


class BodyError(Exception):
    """A body refused before any handler runs: always 400 with ``{"error": message}``."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def decodes_zstd(path: str, content_encoding: str | None) -> bool:
    """Whether Ollama decodes this request's body as zstd."""
    return content_encoding == "zstd" and path in ZSTD_PATHS


def _is_frame_start(data: bytes) -> bool:
    # A zstd frame, or a skippable frame (magic 0x184D2A50..0x184D2A5F, little-endian).
    return data[:4] == _ZSTD_MAGIC or (data[1:4] == b"\x2a\x4d\x18" and data[0] & 0xF0 == 0x50)


def _error(exc: zstandard.ZstdError) -> BodyError:
    text = str(exc)
    if "too much memory" in text:
        return BodyError("window size exceeded")
    if "Unknown frame descriptor" in text:
        return BodyError("invalid input: magic number mismatch")
    if "checksum" in text:
        return BodyError("CRC check failed")
    return BodyError(text.removeprefix("zstd decompress error: "))


def _complete(data: bytes, decoder: zstandard.ZstdDecompressor) -> bool:
    """Every frame of ``data`` ends (the streaming reader returns short data silently)."""
    while data:
        frame = decoder.decompressobj()
        frame.decompress(data)
        if not frame.eof:
            return False
        data = frame.unused_data
    return True


def decode_zstd(
    data: bytes, *, limit: int = MAX_DECODED_BYTES, window: int = MAX_WINDOW_BYTES
) -> bytes:
    """The decompressed body (concatenated frames allowed), or :class:`BodyError`.

    Output is read in chunks and refused past ``limit``, so a small body that
    inflates without bound costs at most ``limit`` bytes of memory.
    """
    if not data:
        return b""  # an empty stream decodes to an empty body (then "missing request body")
    if len(data) < 4:
        raise BodyError("unexpected EOF")
    if not _is_frame_start(data):
        raise BodyError("invalid input: magic number mismatch")
    decoder = zstandard.ZstdDecompressor(max_window_size=window)
    out = bytearray()
    try:
        with decoder.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while chunk := reader.read(_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise BodyError(MSG_TOO_LARGE)
        # Bounded by ``limit`` now, so checking for a cut-off last frame is safe.
        if not _complete(data, decoder):
            raise BodyError("unexpected EOF")
    except zstandard.ZstdError as exc:
        raise _error(exc) from None
    return bytes(out)


def request_body(path: str, content_encoding: str | None, data: bytes) -> bytes:
    """The body a handler of ``path`` sees: decoded where Ollama decodes, else as sent."""
    if decodes_zstd(path, content_encoding):
        return decode_zstd(data)
    return data
