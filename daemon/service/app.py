"""The daemon assembled: collectors from the config, scheduler, store, exporter, HTTP."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from gpuprobe.daemon.core.config import Config
from gpuprobe.daemon.core.state import Store
from gpuprobe.daemon.export.exporter import SnapshotCollector, version
from gpuprobe.daemon.service.http import HttpServer, landing_page
from gpuprobe.daemon.service.scheduler import TICK_SECONDS, Scheduler
from gpuprobe.daemon.service.webconfig import WebConfigSource
from gpuprobe.daemon.service.wiring import Sources, build

log = logging.getLogger("gpuprobe")

HEALTH_GRACE = 10.0  # seconds without a scheduler tick before /healthz fails


class Daemon:
    def __init__(self, config: Config, simulation: Any = None, nvml: Any = None,
                 web: WebConfigSource | None = None) -> None:
        """``nvml`` replaces the pynvml module (a wrapper in benchmarks); ``simulation`` brings
        its own library faces; ``web`` is the loaded web config (TLS, basic auth)."""
        self.config = config
        self.web = web or WebConfigSource(None)
        self.simulation = simulation
        self.store = Store()
        self.sources = Sources(config, self.store.view, nvml=nvml, simulation=simulation)
        enabled = [n for n, c in config.collectors.items() if c.enabled]
        self.scheduler = Scheduler([(c, config.collectors[c.name])
                                    for c in build(self.sources, enabled)], self.store)
        # auto_describe lets ?name[]= find the process_* metrics too (ours have describe()).
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SnapshotCollector(self.store, config.exporter))
        ProcessCollector(registry=self.registry)
        self.http: HttpServer | None = None

    def start(self, serve: bool = True) -> None:
        """Bind the port (raises OSError), then start collecting."""
        # Objects made so far (modules, the library bindings, the catalogue) live as long as
        # the process: keep them out of the cyclic GC's full passes, which otherwise made the
        # slowest 1% of /metrics renders twice as slow (benchmarks/overhead.py).
        gc.freeze()
        if serve:
            host, port = self.config.listen_address()
            self.http = HttpServer(host, port, self.registry, self.health, self.ready,
                                   self.landing, self.web, self.config.http)
            self.registry.register(self.http.stats)
            self.store.subscribe(self.http.exposition.changed)  # encoded ahead of scrapes
            self.http.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        if self.http is not None:
            self.http.stop()
        for c in self.scheduler.collectors:
            try:
                c.close()
            except Exception:
                log.debug("closing collector %s", c.name, exc_info=True)
        self.sources.close()
        if self.simulation is not None:
            self.simulation.close()

    def alive(self) -> bool:
        return time.monotonic() - self.scheduler.heartbeat < max(HEALTH_GRACE, 4 * TICK_SECONDS)

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.scheduler.heartbeat
        return self.alive(), {"scheduler_tick_age_seconds": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        view = self.store.view()
        backends = {name: {"up": b.up, "reason": b.reason}
                    for name, b in view.backends().items()}
        ready = self.scheduler.attempted_all()
        return ready, {"ready": ready, "backends": backends,
                       "collectors": {n: h.up for n, h in view.health.items()}}

    def landing(self) -> str:
        view = self.store.view()
        return landing_page(version(), self.config.listen, len(view.devices()),
                            {n: h.up for n, h in view.health.items()})
