"""API keys, per-key limits and rate buckets (pure: no aiohttp, no I/O but file reads).

Ollama has no inbound authentication and its maintainers point to a proxy
(ollama/ollama PR #5415), so the balancer supplies it.  Keys live in a YAML
file, usually a mounted Kubernetes Secret, as SHA-256 hashes only::

    keys:
      - name: team-a                       # shown in logs and the request record
        key_sha256: 9f86d081884c7d65...    # python -m ollama_balancer.auth hash
        models: ["llama3*", "qwen2.5:*"]   # globs on the model name; default ["*"]
        max_concurrent: 4                  # requests in flight; 0 = unlimited
        requests_per_minute: 120           # 0 = unlimited
        tokens_per_minute: 200000          # prompt + generated tokens; 0 = unlimited
        admin: false                       # may call /api/pull, /api/delete, ...
        priority: standard                 # critical | standard | batch (its class)
        weight: 1                          # its fair share against the class's other tenants
        max_wait: 600                      # seconds of estimated wait before a 429 (default:
                                           # its class's; see docs/scheduling.md)

A presented key is hashed and compared with *every* stored hash through
:func:`hmac.compare_digest`, so neither the match position nor a prefix leaks
through timing.  Keys are never logged; only names are.

The HTTP shell (middleware, file watcher) is :mod:`ollama_balancer.security`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ollama_wire.names import InvalidModelName, parse

from .queueing import BadPriority, Priority, parse_priority

__all__ = [
    "ApiKey",
    "AuthConfigError",
    "KeyState",
    "KeyTable",
    "TokenBucket",
    "hash_key",
    "parse_keys",
    "presented_key",
]

_HEX = frozenset("0123456789abcdef")


class AuthConfigError(ValueError):
    """The keys file is malformed; the message names the entry (never a key)."""


def hash_key(key: str) -> str:
    """The ``key_sha256`` value of ``key`` (lowercase hex)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    models: tuple[str, ...] = ("*",)
    max_concurrent: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    admin: bool = False
    priority: Priority = Priority.STANDARD
    """The class its requests wait in; ``X-Priority`` may lower it, never raise it."""
    weight: float = 1.0
    """Its share of the slots against other tenants of the same class (slot-seconds)."""
    max_wait: float | None = None
    """Estimated wait beyond which its requests are refused (None: its class's limit)."""

    def allows_model(self, name: str) -> bool:
        """Whether ``name`` (as sent) matches one of the model globs.

        Globs are matched case-insensitively (Ollama compares names with
        EqualFold) against the name as sent, its display form (``llama3:latest``)
        and its canonical form (``registry.ollama.ai/library/llama3:latest``).
        """
        if "*" in self.models:
            return True
        forms = {name.lower()}
        try:
            parsed = parse(name)
            forms.add(parsed.shortest.lower())
            forms.add(parsed.canonical)
        except InvalidModelName:
            pass
        return any(fnmatch.fnmatchcase(f, g.lower()) for g in self.models for f in forms)


def _int(entry: Mapping[str, Any], key: str, where: str) -> int:
    raw = entry.get(key, 0)
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise AuthConfigError(f"{where}: {key} must be a non-negative integer")
    return raw


def parse_keys(text: str) -> KeyTable:
    """Parse the keys file; raises :class:`AuthConfigError` naming what is wrong."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AuthConfigError(f"keys file: invalid YAML: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys", []), list):
        raise AuthConfigError("keys file: expected a mapping with a 'keys' list")
    keys: list[ApiKey] = []
    seen: set[str] = set()
    names: set[str] = set()
    for i, entry in enumerate(doc.get("keys") or []):
        where = f"keys[{i}]"
        if not isinstance(entry, Mapping):
            raise AuthConfigError(f"{where}: expected a mapping")
        unknown = set(entry) - {
            "name",
            "key_sha256",
            "models",
            "max_concurrent",
            "requests_per_minute",
            "tokens_per_minute",
            "admin",
            "priority",
            "weight",
            "max_wait",
        }
        if unknown:
            raise AuthConfigError(f"{where}: unknown field(s) {sorted(map(str, unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise AuthConfigError(f"{where}: name is required")
        where = f"keys[{i}] ({name})"
        if name.strip() in names:
            raise AuthConfigError(f"{where}: the name appears twice")
        names.add(name.strip())
        digest = entry.get("key_sha256")
        if isinstance(digest, str) and digest.lower().startswith("sha256:"):
            digest = digest[7:]
        if not isinstance(digest, str) or len(digest) != 64 or set(digest.lower()) - _HEX:
            raise AuthConfigError(f"{where}: key_sha256 must be 64 hex digits")
        digest = digest.lower()
        if digest in seen:
            raise AuthConfigError(f"{where}: the same key_sha256 appears twice")
        seen.add(digest)
        models = entry.get("models", ["*"])
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise AuthConfigError(f"{where}: models must be a list of glob strings")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise AuthConfigError(f"{where}: admin must be true or false")
        try:
            priority = parse_priority(str(entry.get("priority", Priority.STANDARD.value)))
        except BadPriority as exc:
            raise AuthConfigError(f"{where}: priority: {exc}") from None
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise AuthConfigError(f"{where}: weight must be a positive number")
        if weight > 1e6:
            raise AuthConfigError(f"{where}: weight must be at most 1000000")
        max_wait = entry.get("max_wait")
        if max_wait is not None and (
            isinstance(max_wait, bool)
            or not isinstance(max_wait, int | float)
            or not 0 < max_wait <= 86400
        ):
            raise AuthConfigError(f"{where}: max_wait must be seconds in (0, 86400]")
        keys.append(
            ApiKey(
                name=name.strip(),
                sha256=digest,
                models=tuple(models),
                max_concurrent=_int(entry, "max_concurrent", where),
                requests_per_minute=_int(entry, "requests_per_minute", where),
                tokens_per_minute=_int(entry, "tokens_per_minute", where),
                admin=admin,
                priority=priority,
                weight=float(weight),
                max_wait=None if max_wait is None else float(max_wait),
            )
        )
    return KeyTable(tuple(keys))


@dataclass(frozen=True, slots=True)
class KeyTable:
    keys: tuple[ApiKey, ...] = ()

    def lookup(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``, compared in constant time."""
        digest = hash_key(presented).encode()
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: every hash is compared
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a client sent: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


@dataclass(slots=True)
class TokenBucket:
    """``per_minute`` units a minute, with a burst of one minute's worth.

    ``take`` admits a request only when the bucket holds enough; ``charge``
    debits after the fact (tokens are known only when a request ends), so the
    level may go negative and the next request waits until it refills.
    """

    per_minute: int
    level: float | None = None  # None: full (first use)
    updated: float = 0.0

    def _refill(self, now: float) -> float:
        if self.level is None:
            self.level = float(self.per_minute)
        else:
            rate = self.per_minute / 60.0
            self.level = min(float(self.per_minute), self.level + (now - self.updated) * rate)
        self.updated = now
        return self.level

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` is available (0 = now); takes nothing."""
        if self.per_minute <= 0:
            return 0.0
        level = self._refill(now)
        missing = min(amount, float(self.per_minute)) - level
        return 0.0 if missing <= 1e-9 else missing / (self.per_minute / 60.0)

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` if available and return 0, else return seconds to wait."""
        delay = self.wait(now, amount)
        if delay == 0.0 and self.per_minute > 0:
            self.level = self._refill(now) - amount
        return delay

    def charge(self, now: float, amount: float) -> None:
        if self.per_minute <= 0:
            return
        # Floor at one minute of debt, so one huge request cannot lock a key out for long.
        self.level = max(-float(self.per_minute), self._refill(now) - amount)


@dataclass(slots=True)
class KeyState:
    """What one key has in flight and left in its buckets (per balancer replica)."""

    inflight: int = 0
    requests: TokenBucket = field(default_factory=lambda: TokenBucket(0))
    tokens: TokenBucket = field(default_factory=lambda: TokenBucket(0))

    @classmethod
    def for_key(cls, key: ApiKey) -> KeyState:
        return cls(0, TokenBucket(key.requests_per_minute), TokenBucket(key.tokens_per_minute))

    def admit(self, key: ApiKey, now: float) -> tuple[str, int] | None:
        """None if the request may start (and it is counted), else (reason, Retry-After)."""
        if key.max_concurrent and self.inflight >= key.max_concurrent:
            return (f"too many concurrent requests (limit {key.max_concurrent})", 1)
        if self.requests.per_minute != key.requests_per_minute:
            self.requests.per_minute = key.requests_per_minute
        if self.tokens.per_minute != key.tokens_per_minute:
            self.tokens.per_minute = key.tokens_per_minute
        wait = self.tokens.wait(now, 1.0)
        if wait > 0:
            return (f"token rate limit exceeded ({key.tokens_per_minute}/min)", _ceil(wait))
        wait = self.requests.take(now)
        if wait > 0:
            return (f"request rate limit exceeded ({key.requests_per_minute}/min)", _ceil(wait))
        self.inflight += 1
        return None


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
