"""The ``nvidia_events`` collector: XID errors counted by code, and the GPU-unavailable and
recovery-action events, from an NVML event set.

A dedicated thread waits on the event set (one second at a time, so it can stop and notice
a re-initialised library) and counts each XID per device and code, and the other two per
device and kind; the collector only publishes the counts, so the poll never blocks on
events. Events that happen before the daemon registers for them are not delivered by NVML.
The configured critical codes, and the kinds a GPU supports, start at 0 on every registered
GPU so that the first occurrence shows as an increase.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.probes.backend import LIBRARY_FATAL, EventWatcher, text
from gpuprobe.probes.nvidia.session import NvmlSession

log = logging.getLogger("gpuprobe.nvidia.events")

XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
# nvmlEventTypeGpuUnavailableError, nvmlEventTypeGpuRecoveryAction -> the event's kind
OTHER_EVENTS = {0x4000: "unavailable", 0x8000: "recovery_action"}
WANTED = XID_EVENT | sum(OTHER_EVENTS)
WAIT_MS = 1000
MAX_CODES_PER_DEVICE = 64  # bound on label values; further codes count as 0 ("unknown")
REREGISTER_SECONDS = 30.0


def handle_key(handle: Any) -> int:
    """Identity of a device handle: the pointer NVML gave, or the object (simulation)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class XidWatcher(EventWatcher):
    thread_name = "nvml-events"

    def __init__(self, session: NvmlSession) -> None:
        super().__init__(session)
        self.session: NvmlSession = session
        self.lib = session.lib
        self.registered: set[str] = set()
        self._handles: dict[int, str] = {}  # handle_key -> uuid of registered devices
        # uuid -> {kind: count} of OTHER_EVENTS; the kinds each registered GPU watches
        self.events: dict[str, Counter] = defaultdict(Counter)
        self.watched: dict[str, tuple[str, ...]] = {}

    def _register(self, event_set: Any) -> set[str]:
        """Register every up physical GPU for XIDs and the other events it supports;
        returns the uuids registered for XIDs."""
        lib = self.lib
        registered = set()
        watched = {}
        for dev in self.session.known():
            if dev.parent is not None or not dev.up:
                continue
            try:
                mask = lib.nvmlDeviceGetSupportedEventTypes(dev.handle) & WANTED
                if mask:
                    lib.nvmlDeviceRegisterEvents(dev.handle, mask, event_set)
                    if mask & XID_EVENT:
                        registered.add(dev.uuid)
                    watched[dev.uuid] = tuple(k for bit, k in OTHER_EVENTS.items() if mask & bit)
                    self._handles[handle_key(dev.handle)] = dev.uuid
            except Exception as e:
                if self._failed(e) == LIBRARY_FATAL:
                    raise
                log.debug("GPU %s: cannot register for XID events: %s", dev.identity.name, e)
        with self._lock:
            self.watched = watched
        return registered

    def event_counts(self) -> dict[str, dict[str, int]]:
        """uuid -> {kind: count} of the events other than XIDs, each kind a GPU is
        registered for at 0 until it happens."""
        with self._lock:
            watched = dict(self.watched)
            seen = {uuid: dict(c) for uuid, c in self.events.items()}
        out = {uuid: {**dict.fromkeys(watched.get(uuid, ()), 0), **seen.get(uuid, {})}
               for uuid in watched.keys() | seen.keys()}
        return {uuid: c for uuid, c in out.items() if c}

    def _run(self) -> None:
        lib = self.lib
        while not self._stop.is_set():
            if not self.session.up:
                self.healthy = False
                self._stop.wait(0.1)
                continue
            generation = self.session.generation
            try:
                event_set = lib.nvmlEventSetCreate()
            except Exception as e:
                self._failed(e)
                self.healthy = False
                self._stop.wait(5.0)
                continue
            try:
                self._watch(event_set, generation)
            finally:
                try:
                    lib.nvmlEventSetFree(event_set)
                except Exception:
                    pass

    def _watch(self, event_set: Any, generation: int) -> None:
        lib = self.lib
        try:
            registered = self._register(event_set)
        except Exception:
            self.healthy = False
            self.attempted.set()
            self._stop.wait(1.0)
            return
        with self._lock:
            self.registered = registered
        self.healthy = True
        self.attempted.set()
        up_set = {d.uuid for d in self.session.known() if d.up and d.parent is None}
        renew_at = time.monotonic() + REREGISTER_SECONDS
        while not self._stop.is_set() and self.session.up and \
                self.session.generation == generation:
            now_up = {d.uuid for d in self.session.known() if d.up and d.parent is None}
            if now_up != up_set or time.monotonic() > renew_at:
                return  # a device left or came back: register afresh
            try:
                data = lib.nvmlEventSetWait(event_set, WAIT_MS)
            except Exception as e:
                if getattr(e, "value", None) == 10:  # NVML_ERROR_TIMEOUT: nothing happened
                    continue
                cls = self._failed(e)
                if cls == LIBRARY_FATAL:
                    self.healthy = False
                    return
                log.debug("event wait failed: %s", e)
                self._stop.wait(0.5)
                return
            kind = int(data.eventType)
            if not kind & WANTED:
                continue
            uuid = self._handles.get(handle_key(data.device))
            if uuid is None:  # not a handle we registered: ask NVML which device it is
                try:
                    uuid = str(text(lib.nvmlDeviceGetUUID(data.device)))
                except Exception as e:
                    self._failed(e)
                    continue
            dev = self.session.devices.get(uuid)
            if not kind & XID_EVENT:
                name = next(k for bit, k in OTHER_EVENTS.items() if kind & bit)
                with self._lock:
                    self.events[uuid][name] += 1
                log.warning("GPU %s (%s): %s event (data %d)", dev.identity.name if dev else "?",
                            uuid, name.replace("_", " "), int(data.eventData))
                continue
            code = int(data.eventData)
            with self._lock:
                counts = self.counts[uuid]
                if code not in counts and len(counts) >= MAX_CODES_PER_DEVICE:
                    code = 0
                counts[code] += 1
            log.warning("XID %d on GPU %s (%s)", code, dev.identity.name if dev else "?", uuid)


class NvidiaEvents:
    name = "nvidia_events"

    def __init__(self, session: NvmlSession, watcher: XidWatcher, codes: Iterable[int]) -> None:
        """``codes``: the XIDs exported at 0 before they first happen."""
        self.session = session
        self.codes = codes
        self.watcher = watcher
        # Start now: NVML only delivers events that happen after registration.
        self.watcher.ensure_running()

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        if not self.session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=self.session.absent, errors=errors)
        w = self.watcher
        w.ensure_running()
        w.attempted.wait(max(0.0, min(1.0, deadline - time.monotonic())))
        counts, watch_errors = w.snapshot()
        errors.update(watch_errors)
        out: dict[str, dict[int, int]] = {}
        for uuid in w.registered | set(counts):
            merged = dict.fromkeys(self.codes, 0) if uuid in w.registered else {}
            merged.update(counts.get(uuid, {}))
            out[uuid] = merged
        return CollectorResult(ok=w.healthy, xid_counts=out, event_counts=w.event_counts(),
                               errors=errors)

    def close(self) -> None:
        self.watcher.stop()
