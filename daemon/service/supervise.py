"""The running daemon's main loop: systemd readiness and watchdog, SIGHUP reloads, stop."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gpuprobe.daemon.service.systemd import Notifier

log = logging.getLogger("gpuprobe")


def _reload(daemon: Any, notifier: Notifier) -> None:
    """SIGHUP: re-read the web config file now; the main config needs a restart."""
    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    if daemon.config.web_config_file:
        ok = daemon.reload_web_config()
        if ok is None:
            log.warning("SIGHUP: the serving process did not say within 5 s whether it re-read "
                        "the web config %s", daemon.config.web_config_file)
        else:
            log.info("SIGHUP: web config %s %s; other configuration changes take a restart",
                     daemon.config.web_config_file, "re-read" if ok else "kept (see above)")
    else:
        log.info("SIGHUP: nothing to reload (no web config file); configuration changes take "
                 "a restart")
    notifier.notify("READY=1")


def supervise(daemon: Any, stop: threading.Event, notifier: Notifier,
              reload: threading.Event | None = None) -> None:
    """Tell systemd when the daemon is ready (config loaded, port bound, every collector
    tried once: device discovery has been attempted), ping its watchdog while the scheduler
    ticks (whether or not the GPUs answer), reload on SIGHUP, and say when it stops."""
    ping = notifier.watchdog_seconds / 2 if notifier.watchdog_seconds else None
    ready = False
    next_ping = 0.0
    while not stop.is_set():
        if reload is not None and reload.is_set():
            reload.clear()
            _reload(daemon, notifier)
        now = time.monotonic()
        if not ready and daemon.scheduler.attempted_all():
            ready = True
            devices = len(daemon.store.view().devices())
            notifier.ready(f"serving {daemon.config.listen}; {devices} devices")
            log.info("ready: every collector has run once (%d devices)", devices)
        if ping is not None and now >= next_ping:
            if daemon.alive():
                notifier.watchdog()
            else:  # a wedged scheduler: let systemd's watchdog restart us
                log.error("scheduler has not ticked for %.0f s; not pinging the watchdog",
                          now - daemon.scheduler.heartbeat)
            next_ping = now + ping
        stop.wait(min(0.25 if not ready else 1.0, ping or 1.0))
    notifier.stopping()
