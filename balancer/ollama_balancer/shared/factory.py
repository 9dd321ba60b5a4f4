"""Build the shared state the settings ask for (the one place that decides which)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.auth import KeyState
from ..core.ledger import Ledger
from ..core.shared.address import parse_store_url
from ..core.shared.keys import Keys
from ..core.shared.local import LocalState
from ..core.shared.model import new_replica_id
from ..core.shared.protocol import SharedState
from .fallback import FallbackState, SharedObserver
from .store import RedisState

if TYPE_CHECKING:  # the settings import this package's address parser: no runtime circle
    from ..settings import BalancerSettings

__all__ = ["create_shared_state"]


def create_shared_state(
    settings: BalancerSettings,
    ledger: Ledger,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: SharedObserver | None = None,
    replica: str | None = None,
    log: Any = None,
    quotas: dict[str, KeyState] | None = None,
) -> SharedState:
    """LocalState on ``ledger`` without ``shared_state``; else Redis with local fallback.

    Call ``await state.start()`` once the event loop runs (it never raises for an
    unreachable store) and ``await state.close()`` on exit."""
    replica = replica or new_replica_id()
    local = LocalState(ledger, replica=replica, clock=clock, quotas=quotas)
    if not settings.shared.url:
        return local
    store = RedisState(
        parse_store_url(settings.shared.url),
        replica=replica,
        keys=Keys(settings.shared.prefix),
        clock=clock,
        lease_ttl=settings.shared.lease_ttl,
        op_timeout=settings.shared.timeout,
        # A load is over by its first byte, and no later than the first-byte timeout.
        load_ttl=settings.proxy.first_byte_timeout,
        password_file=settings.shared.password_file,
        sentinel_password_file=settings.shared.sentinel_password_file,
        ca_file=settings.shared.ca_file,
        default_load_seconds=settings.routing.default_load_seconds,
        default_service_seconds=settings.routing.default_service_seconds,
    )
    return FallbackState(
        store,
        local,
        renew_interval=settings.shared.lease_renew_interval,
        degrade=settings.shared.degrade,
        degraded_hold=settings.shared.degraded_hold,
        observer=observer,
        log=log,
    )
