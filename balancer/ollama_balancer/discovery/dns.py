"""DNS discovery: resolve a headless Service name every interval (A and AAAA records).

Each address becomes a backend named ``ip:port``.  A failed resolution keeps the last set:
a DNS hiccup must not empty the fleet.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

from ollama_wire.backend import Backend
from ollama_wire.hosts import endpoint_url, host_port

from ..backends import Publish
from ..settings import DiscoverySettings
from ..telemetry import get_logger

__all__ = ["DnsDiscovery", "backends_from_addresses"]

log = get_logger("ollama_fleet.discovery.dns")


def backends_from_addresses(
    addresses: Iterable[str], *, port: int, slots: int = 1, scheme: str = "http"
) -> list[Backend]:
    """One backend per distinct address, sorted (pure)."""
    backends = []
    for ip in sorted(set(addresses)):
        url = endpoint_url(ip, port, scheme)
        backends.append(Backend(name=host_port(url), url=url, slots=slots))
    return backends


def _address(info: tuple[Any, ...]) -> str:
    sockaddr = info[4]
    return str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone index


class DnsDiscovery:
    """:class:`~ollama_balancer.backends.Discovery` from periodic ``getaddrinfo``."""

    def __init__(
        self, settings: DiscoverySettings, *, interval: float = 5.0, timeout: float = 5.0
    ) -> None:
        """``settings``: its ``dns_name``, ``dns_port`` and ``default_slots``.  ``interval``:
        seconds between resolutions (CoreDNS caches headless answers for 5 s by default);
        ``timeout``: seconds one resolution may take before it counts as failed."""
        self.settings = settings
        self.interval = interval
        self.timeout = timeout
        self.failures = 0

    async def resolve(self) -> list[Backend]:
        s = self.settings
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(s.dns_name, s.dns_port, type=socket.SOCK_STREAM), self.timeout
        )
        return backends_from_addresses(
            (_address(i) for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)),
            port=s.dns_port,
            slots=s.default_slots,
        )

    async def run(self, publish: Publish) -> None:
        last: list[Backend] | None = None
        while True:
            try:
                backends = await self.resolve()
            except (OSError, TimeoutError) as exc:  # socket.gaierror is an OSError
                self.failures += 1
                log.warning(
                    "discovery.dns.error", name=self.settings.dns_name, error=str(exc), kept=last
                )
            else:
                if backends != last:
                    last = backends
                    publish(list(backends))
            await asyncio.sleep(self.interval)
