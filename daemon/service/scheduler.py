"""Runs every enabled collector on its own interval, each in its own worker thread.

A collection gets a deadline. One that is still running past it is marked stalled (its
devices report down, the collector reports not up) and the collector is not called again
until that call returns; every other collector, and ``/metrics``, carry on. The loop's
heartbeat feeds ``/healthz`` and the systemd watchdog: it shows the daemon is alive, not
that the GPUs answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from gpuprobe.daemon.core.collectors import Collector
from gpuprobe.daemon.core.config import CollectorConfig
from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.daemon.core.state import CollectorHealth, Store
from gpuprobe.daemon.core.workers import Job, Worker

log = logging.getLogger("gpuprobe.scheduler")

# The longest the loop sleeps: it wakes when a collector is due or a running one reaches its
# deadline, and at least this often for the heartbeat (HEALTH_GRACE is 10 s).
TICK_SECONDS = 1.0
# A collector is asked to finish within this share of its timeout, so that one that honours
# its deadline is never mistaken for a stalled one.
DEADLINE_SHARE = 0.85


@dataclass(eq=False)
class _Entry:
    collector: Collector
    config: CollectorConfig
    worker: Worker
    future: Job | None = None
    started: float = 0.0
    next_due: float = 0.0
    runs: int = 0
    up: bool = False
    stalled: bool = False
    pending: bool = False  # a run has started and not yet published
    failed: bool = False
    last_success: float | None = None
    last_duration: float | None = None
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.collector.name


class Scheduler:
    def __init__(self, collectors: list[tuple[Collector, CollectorConfig]], store: Store) -> None:
        self.store = store
        self._entries = [
            _Entry(c, cfg, Worker(f"collector-{c.name}")) for c, cfg in collectors
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        for e in self._entries:
            self._publish(e, None)

    @property
    def collectors(self) -> list[Collector]:
        return [e.collector for e in self._entries]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for e in self._entries:
            e.worker.stop()

    def settling(self) -> bool:
        """A collector's run is under way and not yet published (stalled ones aside): more
        of this poll's results are coming. Collectors due together start together, so the
        exposition waits for the last of them and encodes the poll once (app.py)."""
        return any(e.pending and not e.stalled for e in self._entries)

    def attempted_all(self) -> bool:
        """Every collector has finished at least one run, or is stalled in its first."""
        return all(e.runs > 0 or e.stalled for e in self._entries)

    def run_once(self) -> None:
        """Run every collector once and wait for each up to its deadline (for `snapshot`)."""
        now = time.monotonic()
        for e in self._entries:
            self._start(e, now)
        for e in self._entries:
            assert e.future is not None
            left = e.started + e.config.deadline() - time.monotonic()
            try:
                e.future.result(timeout=max(0.0, left))
            except TimeoutError:
                self._check_stall(e, time.monotonic())
            except Exception:  # already recorded by _run
                pass

    # -- loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            self.heartbeat = now
            wake = now + TICK_SECONDS
            for e in self._entries:
                if e.future is not None and not e.future.done():
                    self._check_stall(e, now)
                    if not e.stalled:  # wake just past its deadline to mark it stalled
                        wake = min(wake, e.started + e.config.deadline() + 0.001)
                    continue
                if now >= e.next_due:
                    self._start(e, now)
                wake = min(wake, e.next_due)
            self._stop.wait(max(0.01, wake - time.monotonic()))

    def _start(self, e: _Entry, now: float) -> None:
        e.started = now
        interval = e.config.interval
        # Keep the cadence, but never queue up runs that were missed while one hung.
        e.next_due = max(e.next_due + interval, now + interval * 0.5) if e.runs else now + interval
        e.pending = True
        e.future = e.worker.submit(self._run, e, now + DEADLINE_SHARE * e.config.deadline())

    def _check_stall(self, e: _Entry, now: float) -> None:
        with e.lock:
            if e.stalled or now - e.started <= e.config.deadline():
                return
            e.stalled = True
            e.up = False
            e.errors["timeout"] += 1
        log.warning(
            "collector %s: no answer after %.1fs; reported stalled and not called again "
            "until the call returns", e.name, now - e.started)
        self._publish(e, None)

    def _run(self, e: _Entry, deadline: float) -> None:
        t0 = time.monotonic()
        result: CollectorResult | None = None
        try:
            result = e.collector.collect(deadline)
        except Exception:
            failed = True
            if not e.failed:
                log.exception("collector %s failed", e.name)
            else:
                log.debug("collector %s failed again", e.name, exc_info=True)
        else:
            failed = False
        duration = time.monotonic() - t0
        with e.lock:
            recovered = e.stalled
            e.runs += 1
            e.stalled = False
            e.pending = False
            e.failed = failed
            e.last_duration = duration
            if failed:
                e.errors["internal"] += 1
                e.up = False
            else:
                assert result is not None
                e.errors.update(result.errors)
                e.up = result.ok
                if result.ok:
                    e.last_success = time.time()
        if recovered:
            log.info("collector %s: answered again after %.1fs", e.name, duration)
        self._publish(e, result)

    def _publish(self, e: _Entry, result: CollectorResult | None) -> None:
        with e.lock:
            health = CollectorHealth(
                name=e.name,
                interval=e.config.interval,
                up=e.up,
                stalled=e.stalled or e.failed,
                runs=e.runs,
                last_success=e.last_success,
                last_duration=e.last_duration,
                errors_total=dict(e.errors),
            )
        self.store.publish(e.name, result, health)
