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
from gpuprobe.daemon.export.exposition import Exposition
from gpuprobe.daemon.service.http import HttpServer, landing_page
from gpuprobe.daemon.service.scheduler import TICK_SECONDS, Scheduler
from gpuprobe.daemon.service.serving import ServingProcess, State
from gpuprobe.daemon.service.webconfig import WebConfigSource
from gpuprobe.daemon.service.wiring import Sources, build

log = logging.getLogger("gpuprobe")

HEALTH_GRACE = 10.0  # seconds without a scheduler tick before /healthz fails


# Young-generation collections every 10,000 net allocations instead of 700. A poll of 64 GPUs
# x 128 processes makes tens of thousands of short-lived objects; at CPython's default each
# cycle's survivors were promoted fast enough to force a full collection every 4-5 s (17 in
# 75 s, 45 ms each: 1.4 s of GC CPU in all). At these thresholds the same 75 s had 127
# young collections and no full one (0.46 s). Nearly all of the garbage is freed by
# reference counting; the collector only finds cycles, later.
GC_THRESHOLDS = (10_000, 10, 10)

class Daemon:
    def __init__(self, config: Config, simulation: Any = None, nvml: Any = None,
                 web: WebConfigSource | None = None, serving: ServingProcess | None = None
                 ) -> None:
        """``nvml`` replaces the pynvml module (a wrapper in benchmarks); ``simulation`` brings
        its own library faces; ``web`` is the loaded web config (TLS, basic auth);
        ``serving``, a serving process launched already (else :meth:`start` launches one
        where http.separate_process is true)."""
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
        self._snapshots = SnapshotCollector(self.store, config.exporter)
        self.registry.register(self._snapshots)
        ProcessCollector(registry=self.registry)
        self.http: HttpServer | None = None  # serving here (http.separate_process: false)
        self.serving = serving  # else the serving process
        self.exposition: Exposition | None = None  # what encodes each snapshot ahead

    def start(self, serve: bool = True) -> None:
        """Bind the port (raises OSError), then start collecting."""
        # Objects made so far (modules, the library bindings, the catalogue) live as long as
        # the process: keep them out of the cyclic GC's full passes, which otherwise made the
        # slowest 1% of /metrics renders twice as slow (benchmarks/overhead.py).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if serve and (self.serving is not None or self.config.http.separate_process):
            self._serve_from_a_process()
        elif serve:
            host, port = self.config.listen_address()
            self.http = HttpServer(host, port, self.registry, self.health, self.ready,
                                   self.landing, self.web, self.config.http)
            self.registry.register(self.http.stats)
            self.exposition = self.http.exposition
            self.exposition.settling = self.scheduler.settling  # a poll cycle encoded once
            self.store.subscribe(self.exposition.changed)  # encoded ahead of scrapes
            self.http.start()
        self.scheduler.start()

    def _serve_from_a_process(self) -> None:
        """Serve from a forked child (serving.py), forked now unless ``gpuprobe run`` did
        it before building the rest; this process encodes each snapshot and sends it."""
        if self.serving is None:
            self.serving = ServingProcess.launch(self.config, self.web)
        self.exposition = Exposition(self.registry, on_encoded=self.serving.post)
        self.exposition.settling = self.scheduler.settling  # a poll cycle encoded once
        self.store.subscribe(self.exposition.changed)
        self.serving.start(self._state)
        self.exposition.start()
        self.exposition.changed()  # what was published before the subscription

    def _state(self) -> State:
        return State(self.health(), self.ready(), self._landing_facts())

    def reload_web_config(self) -> bool | None:
        """SIGHUP: re-read the web config now; whether the file's content is in force (None:
        the serving process did not answer in time)."""
        if self.serving is not None:
            return self.serving.reload_web_config()
        return self.http.reload_web_config() if self.http is not None else True

    def stop(self) -> None:
        self.scheduler.stop()
        if self.serving is not None:  # launched, whether or not start() came
            self.serving.stop()
            if self.exposition is not None:
                self.exposition.stop()
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
        return landing_page(*self._landing_facts())

    def _landing_facts(self) -> tuple[str, str, int, dict[str, bool]]:
        view = self.store.view()
        return (version(), self.config.listen, len(view.devices()),
                {n: h.up for n, h in view.health.items()})
