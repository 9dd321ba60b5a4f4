"""The shared store's address: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` or ``rediss://``.

Pure: parsed once by the settings (so a bad URL stops the balancer at start with a
message naming it) and again by the connector.  The password never appears in
:meth:`StoreAddress.redacted`, which is what logs and ``/-/fleet`` show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["StoreAddress", "parse_store_url"]

DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class StoreAddress:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL without its password, for logs and the fleet view."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}:***@" if self.password else f"{self.username}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


def parse_store_url(url: str) -> StoreAddress:
    """Parse a Redis/Valkey URL; raises ValueError saying what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a redis:// or rediss:// URL: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"scheme must be redis:// or rediss:// (TLS), not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"database must be a number, not {path!r}")
    if parts.query or parts.fragment:
        raise ValueError("query options are not read here; use the shared_state_* settings")
    return StoreAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        db=int(path or 0),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
