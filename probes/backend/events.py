"""The thread that counts a library's device events (XIDs, resets), for a collector to publish."""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict

from gpuprobe.probes.backend.errors import Classifier


class EventWatcher:
    """A thread that counts a library's device events; collectors publish its snapshot, so
    a poll never blocks on events. Subclasses implement ``_run`` (until ``_stop`` is set)."""

    thread_name = "events"

    def __init__(self, session: Classifier) -> None:
        self.session = session
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.errors: Counter = Counter()
        self.healthy = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_failed = False
        self.attempted = threading.Event()  # set once registration has been tried

    def ensure_running(self) -> None:
        """Start the thread if it is not running; when no thread can be started (out of
        threads or memory) the events go uncounted until a later poll can start it."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                            daemon=True)
            try:
                self._thread.start()
            except RuntimeError as e:
                if not self._start_failed:
                    self._start_failed = True
                    logging.getLogger("gpuprobe").warning(
                        "cannot start the %s thread (%s); retried at each poll",
                        self.thread_name, e)
                return
            self._start_failed = False

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> tuple[dict[str, dict], Counter]:
        with self._lock:
            counts = {uuid: dict(c) for uuid, c in self.counts.items()}
            errors, self.errors = self.errors, Counter()
        return counts, errors

    def _failed(self, e: Exception) -> str:
        cls = self.session.classify(e)
        if cls is None:
            raise e
        with self._lock:
            self.errors[cls] += 1
        return cls

    def _run(self) -> None:
        raise NotImplementedError
