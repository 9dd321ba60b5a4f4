"""Ask the registry for a model's manifest, cached (see :mod:`.sizing` for why).

Answers are cached per model (a tag can move, so not forever).  A 404 is a
verdict (``ModelNotFound``); 401/403, a timeout or an unreachable registry only
mean "size unknown": the pods may hold a key the operator does not, or reach a
registry the operator cannot, so the pull is still tried, with
``Action.max_bytes`` as the safety net.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from ollama_wire import names

from .sizing import MANIFEST_ACCEPT, manifest_size, manifest_url
from .verdicts import MODEL_NOT_FOUND

__all__ = ["Lookup", "ManifestCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lookup:
    size: int | None = None
    #: a verdict reason (ModelNotFound) when the registry said no for good
    verdict: str | None = None
    detail: str = ""


class ManifestCache:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        mirrors: Mapping[str, str],
        *,
        timeout: float = 5.0,
        enabled: bool = True,
        ttl: float = 600.0,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.mirrors = dict(mirrors)
        self.timeout = timeout
        self.enabled = enabled
        self.ttl = ttl
        self.retry_after = retry_after
        self.clock = clock
        self._cache: dict[str, tuple[Lookup, float]] = {}
        self._inflight: dict[str, asyncio.Task[Lookup]] = {}

    def forget(self, keys: Iterable[str]) -> None:
        """Ask again next time (the spec naming them changed)."""
        for key in keys:
            self._cache.pop(key, None)

    async def lookup_all(self, wanted: Mapping[str, str]) -> dict[str, Lookup]:
        """Lookups for ``{key: name}``, concurrently."""
        keys = list(wanted)
        found = await asyncio.gather(*(self.lookup(wanted[k]) for k in keys))
        return dict(zip(keys, found, strict=True))

    async def lookup(self, name: str) -> Lookup:
        if not self.enabled:
            return Lookup()
        try:
            key = names.canonical(name)
        except names.InvalidModelName:
            return Lookup()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > self.clock():
            return hit[0]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(name))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        answer = await asyncio.shield(task)
        keep = self.ttl if answer.size is not None or answer.verdict else self.retry_after
        self._cache[key] = (answer, self.clock() + keep)
        return answer

    async def _fetch(self, name: str) -> Lookup:
        url = manifest_url(name, self.mirrors)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self.session.get(
                url, headers={"Accept": MANIFEST_ACCEPT}, timeout=timeout
            ) as resp:
                if resp.status == 404:
                    return Lookup(verdict=MODEL_NOT_FOUND, detail=f"manifest unknown at {url}")
                if resp.status != 200:
                    log.info(
                        "manifest of %s: HTTP %d from %s; size unknown", name, resp.status, url
                    )
                    return Lookup(detail=f"HTTP {resp.status} from {url}")
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.info("manifest of %s: %s from %s; size unknown", name, type(exc).__name__, url)
            return Lookup(detail=f"{type(exc).__name__} from {url}")
        size = manifest_size(doc)
        return Lookup(size=size, detail="" if size else f"not a manifest at {url}")
