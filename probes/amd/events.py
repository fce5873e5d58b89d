"""The ``amd_events`` collector: GPU resets and thermal-throttle events from KFD, counted.

A dedicated thread keeps an ``AmdSmiEventReader`` per physical GPU (partition 0's handle) and
reads them a second at a time, so it can stop and notice a re-initialised library; the
collector only publishes the counts. The kernel queues events only while a reader is
registered, so events from before the daemon started are not seen. Both kinds start at 0 on
every registered GPU so that the first one shows as an increase. A reset also asks the
session to enumerate again, as handles may change.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.probes.amd.library import STATUS_NO_DATA, error_code
from gpuprobe.probes.amd.session import AmdSession
from gpuprobe.probes.backend import LIBRARY_FATAL, EventWatcher

log = logging.getLogger("gpuprobe.amd.events")

EVENTS = {"THERMAL_THROTTLE": "thermal_throttle", "GPU_PRE_RESET": "reset"}
READ_MS = 1000
REREGISTER_SECONDS = 30.0


class AmdEventWatcher(EventWatcher):
    thread_name = "amdsmi-events"

    def __init__(self, session: AmdSession) -> None:
        super().__init__(session)
        self.session: AmdSession = session
        self._readers: dict[str, Any] = {}  # uuid -> reader
        self._generation = -1

    def _close_readers(self) -> None:
        for reader in self._readers.values():
            try:
                reader.stop()
            except Exception:
                pass
        self._readers = {}

    def _register(self) -> None:
        lib = self.session.lib
        self._close_readers()
        kinds = [lib.AmdSmiEvtNotificationType.THERMAL_THROTTLE,
                 lib.AmdSmiEvtNotificationType.GPU_PRE_RESET,
                 lib.AmdSmiEvtNotificationType.GPU_POST_RESET]
        for dev in self.session.physical():
            if not dev.up:
                continue
            try:
                self._readers[dev.uuid] = lib.AmdSmiEventReader(dev.handle, kinds)
            except Exception as e:
                self._failed(e)
                continue
            with self._lock:
                for name in EVENTS.values():
                    self.counts[dev.uuid][name] += 0
        self._generation = self.session.generation
        self.healthy = bool(self._readers) or not self.session.physical()
        self.attempted.set()

    def _run(self) -> None:
        registered_at = 0.0
        while not self._stop.is_set():
            session = self.session
            if not session.up:
                self._close_readers()
                self.healthy = False
                self._stop.wait(1.0)
                continue
            wanted = {d.uuid for d in session.physical() if d.up}
            if (self._generation != session.generation or (set(self._readers) != wanted
                    and time.monotonic() - registered_at > REREGISTER_SECONDS)):
                self._register()
                registered_at = time.monotonic()
            if not self._readers:
                self._stop.wait(1.0)
                continue
            handles = {getattr(part.handle, "value", id(part.handle)): part.uuid
                       for gpu in session.physical() for part in (gpu, *gpu.children)}
            per_reader = max(1, READ_MS // len(self._readers))
            for uuid, reader in list(self._readers.items()):
                try:
                    events = reader.read(per_reader)
                except Exception as e:
                    if error_code(e) == STATUS_NO_DATA:
                        continue  # the real binding's answer to a wait with no event
                    if self._failed(e) == LIBRARY_FATAL:
                        self._close_readers()
                        break
                    continue
                for event in events or ():
                    self._count(event, handles, uuid)

    def _count(self, event: Any, handles: dict[Any, str], reader_uuid: str) -> None:
        if not isinstance(event, dict):
            return
        name = EVENTS.get(str(event.get("event", "")).rsplit(".", 1)[-1])
        if name is None:
            return
        h = event.get("processor_handle")
        dev = self.session.devices.get(handles.get(getattr(h, "value", h), reader_uuid))
        uuid = (dev.physical.uuid if dev is not None else reader_uuid)
        with self._lock:
            self.counts[uuid][name] += 1
        if name == "reset":
            log.warning("AMD GPU %s: reset (%s)", uuid, event.get("message", ""))
            self.session.rediscover_soon()


class AmdEvents:
    name = "amd_events"

    def __init__(self, session: AmdSession) -> None:
        self.session = session
        self.watcher = AmdEventWatcher(self.session)

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=session.absent or session.initialising, errors=errors)
        self.watcher.ensure_running()
        self.watcher.attempted.wait(max(0.0, min(1.0, deadline - time.monotonic())))
        counts, watch_errors = self.watcher.snapshot()
        errors.update(watch_errors)
        known = {d.uuid for d in session.physical()}
        return CollectorResult(ok=self.watcher.healthy or not known,
                               event_counts={u: c for u, c in counts.items() if u in known},
                               errors=errors)

    def close(self) -> None:
        self.watcher.stop()
