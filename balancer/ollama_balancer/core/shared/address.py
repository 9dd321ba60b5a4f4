"""The shared store's address: one server, or a service behind Redis Sentinel (pure).

Two forms:

* ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS): one standalone
  Redis/Valkey;
* ``redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]``
  (``rediss+sentinel://`` for TLS): the primary of the Sentinel service ``SERVICE``, asked
  of the listed sentinels (port 26379 unless given).  The user and password are the data
  nodes' (primary and replicas), as with one server; sentinels that require a password of
  their own read it from ``shared_state_sentinel_password_file``.  TLS, when asked for,
  applies to the sentinels and the data nodes alike (one CA file).  Valkey's sentinel
  (``valkey-sentinel``) speaks the same protocol.

Pure: parsed once by the settings (so a bad URL stops the balancer at start with a
message naming it) and again by the connector.  The password never appears in
:meth:`StoreAddress.redacted`, which is what logs and ``/-/fleet`` show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["SENTINEL_PORT", "StoreAddress", "parse_store_url"]

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379

_PLAIN = {"redis": False, "rediss": True}
_SENTINEL = {"redis+sentinel": False, "rediss+sentinel": True}


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """One server (``host``, ``port``), or with ``sentinels`` the primary of ``service``."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: Sentinel addresses (host, port), in the order given; empty = one server.
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service (``sentinel monitor NAME ...``) whose primary is the store.
    service: str = ""

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def redacted(self) -> str:
        """The URL without its password, for logs and the fleet view."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}:***@" if self.password else f"{self.username}@"
        if self.sentinel:
            hosts = ",".join(_host_port(h, p) for h, p in self.sentinels)
            return f"{scheme}+sentinel://{auth}{hosts}/{self.service}/{self.db}"
        return f"{scheme}://{auth}{_host_port(self.host, self.port)}/{self.db}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_store_url(url: str) -> StoreAddress:
    """Parse a Redis/Valkey or Sentinel URL; raises ValueError saying what is wrong."""
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _SENTINEL:
        return _parse_sentinel(url, tls=_SENTINEL[scheme])
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a redis:// or rediss:// URL: {exc}") from None
    if parts.scheme not in _PLAIN:
        raise ValueError(
            "scheme must be redis:// or rediss:// (TLS), or redis+sentinel:// or "
            f"rediss+sentinel:// for a Sentinel service, not {parts.scheme!r}"
        )
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
        tls=_PLAIN[parts.scheme],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _parse_sentinel(url: str, *, tls: bool) -> StoreAddress:
    # urlsplit reads one host:port only; a sentinel list is HOST[:PORT],HOST[:PORT]...
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ValueError("query options are not read here; use the shared_state_* settings")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_sentinel_of(item) for item in hostlist.split(",") if item.strip())
    if not sentinels:
        raise ValueError("a Sentinel URL names at least one sentinel: HOST[:PORT][,HOST...]")
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ValueError("a Sentinel URL names its service: redis+sentinel://HOSTS/SERVICE[/DB]")
    if len(segments) > 2:
        raise ValueError(f"after the service only a database number may follow, not {path!r}")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"database must be a number, not {db!r}")
    return StoreAddress(
        host=sentinels[0][0],
        port=sentinels[0][1],
        db=int(db),
        tls=tls,
        username=username,
        password=password,
        sentinels=sentinels,
        service=unquote(segments[0]),
    )


def _sentinel_of(item: str) -> tuple[str, int]:
    item = item.strip()
    try:
        parts = urlsplit(f"//{item}")
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"sentinel {item!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"sentinel {item!r} names no host")
    return parts.hostname, port or SENTINEL_PORT
