"""The state of one emulated Ollama server, below the app that serves it.

Everything a request can read or change lives here: the configuration, the
emulated clock, the library on disk, the scheduler, the puller, the fault
knobs and the counters.  The handlers and the app depend on this state only;
the socket and the lifecycle (listen, go away, restart) belong to
:class:`~.node.EmulatedNode`, which builds the app on top of it.
"""

from __future__ import annotations

from .catalogue import Catalogue
from .clock import ScaledClock
from .config import NodeConfig
from .faults import Faults
from .registry import Library, Puller
from .scheduler import Scheduler
from .stats import Stats

__all__ = ["NodeState"]


class NodeState:
    def __init__(self, config: NodeConfig, catalogue: Catalogue, time_scale: float = 1.0) -> None:
        self.config = config
        self.catalogue = catalogue
        self.clock = ScaledClock(time_scale)
        self.stats = Stats()
        self.faults = Faults()
        self.library = Library(self.clock)
        self.scheduler = Scheduler(config, self.clock, self.stats)
        # Ollama reports pull progress about every 60 ms; scaled, but never a busy loop.
        interval = max(0.005, 0.06 * time_scale)
        self.puller = Puller(
            catalogue, self.library, self.clock, self.stats, config.pull_bandwidth, interval
        )
        self.host = config.host
        self.port = config.port
        """The configured port until the node first listens, then the bound one (kept after)."""
        for name in (*config.installed, *config.loaded):
            if self.library.find(name) is None:
                spec = catalogue[name]
                self.library.install(name, spec)
                self.puller.mark_installed(spec)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def catalogue_name(self, name: str) -> str:
        model = self.library.find(name)
        return model.display if model else name

    def preload(self) -> None:
        """Load the start-up models that are not resident yet."""
        for name in self.config.loaded:
            spec = self.catalogue[name]
            if self.scheduler.runner_for(spec) is None:
                self.scheduler.preload(
                    spec, self.catalogue_name(name), self.config.preload_keep_alive
                )

    async def unload_all(self) -> None:
        """What a process restart does to the scheduler: every runner gone, counters kept."""
        await self.scheduler.close()
        self.scheduler = Scheduler(self.config, self.clock, self.stats)
