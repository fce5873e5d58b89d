"""The ``memory_leaks`` collector: sustained memory growth per device and per process.

It reads no vendor library. It feeds the leak detector (``daemon/analysis/leaks.py``) with
the memory readings the other collectors published (each reading once, at the time it was
taken), and publishes what the detector concludes. Devices are keyed by UUID, processes by
(device UUID, pid, process start time), so a reused pid starts a new series. A process
series is dropped when the process has been missing from three successive listings of its
collector; a device's when the device is gone from every collector.

A device's memory also rises when a new job starts on it, so a device series makes a
fresh start whenever a process it has not seen before appears on it (or on a partition or MIG
instance of it): the device's memory is judged from the job's start on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import cast

from gpuprobe.daemon.analysis.leaks import Assessment, LeakDetector
from gpuprobe.daemon.core.config import LeaksConfig
from gpuprobe.daemon.core.model import CollectorResult, DeviceSample, LeakSample, ProcessSample
from gpuprobe.daemon.core.state import View

NAME = "memory_leaks"
MISSES_BEFORE_FORGET = 3
# A hard bound whatever the host runs: beyond it, new series are not tracked (the detector's
# memory stays under MAX_SERIES * 11.2 KiB, 23 MB; docs/leaks.md).
MAX_SERIES = 2048


def _exhaustion(a: Assessment, free: int | None) -> float | None:
    if not a.suspected or a.slope <= 0 or free is None:
        return None
    return max(0.0, free / a.slope)


class MemoryLeaks:
    name = NAME

    def __init__(self, cfg: LeaksConfig, snapshot: Callable[[], View]) -> None:
        """``snapshot``: the latest published view of every collector's results."""
        self.snapshot = snapshot
        # Devices and processes are sampled on different schedules: one detector each, so
        # each learns its own sampling interval.
        self.devices = LeakDetector(cfg)
        self.processes = LeakDetector(cfg)
        self._seen: dict[str, float] = {}  # collector -> timestamp of the result last fed
        self._parents: dict[str, str] = {}  # partition / MIG instance uuid -> its GPU's
        self._misses: dict[Hashable, int] = {}
        self._meta: dict[Hashable, ProcessSample] = {}
        self._listers: set[str] = set()  # collectors that list processes

    def _feed_devices(self, t: float, devices: tuple[DeviceSample, ...]) -> None:
        for d in devices:
            used = d.memory.used_bytes if d.up else None
            if used is None:
                continue
            key = d.identity.uuid
            if key in self.devices.series or len(self.devices.series) < MAX_SERIES:
                self.devices.observe(key, t, float(used))

    def _feed_processes(self, t: float, procs: tuple[ProcessSample, ...]) -> set[Hashable]:
        fed: set[Hashable] = set()
        for p in procs:
            if p.used_memory_bytes is None:
                continue
            key = (p.device_uuid, p.pid, p.start_ticks)
            if key not in self.processes.series:
                if len(self.processes.series) >= MAX_SERIES:
                    continue
                # A job starting on the device (or a partition or MIG instance of it): its
                # allocation and ramp are not the device leaking.
                for uuid in (p.device_uuid, self._parents.get(p.device_uuid)):
                    if uuid is not None:
                        self.devices.rebase(uuid, t)
            self.processes.observe(key, t, float(p.used_memory_bytes))
            self._meta[key] = p
            fed.add(key)
        return fed

    def collect(self, deadline: float) -> CollectorResult:
        view = self.snapshot()
        self._parents = {d.identity.uuid: d.identity.parent_uuid for d in view.devices()
                         if d.identity.parent_uuid}
        fresh_devices: set[str] = set()
        fresh_processes: set[Hashable] = set()
        listed_by: dict[str, set[Hashable]] = {}
        free: dict[str, int | None] = {}
        present: set[str] = set()
        for name, result in view.results.items():
            if name == NAME:
                continue
            for d in result.devices:
                present.add(d.identity.uuid)
                m = d.memory
                if d.up:
                    free[d.identity.uuid] = m.free_bytes if m.free_bytes is not None else (
                        m.total_bytes - m.used_bytes
                        if m.total_bytes is not None and m.used_bytes is not None else None)
            t = result.timestamp
            if t is None or self._seen.get(name) == t:
                continue  # no readings, or the same ones as last time
            self._seen[name] = t
            self._feed_devices(t, result.devices)
            fresh_devices.update(d.identity.uuid for d in result.devices)
            if result.processes:
                self._listers.add(name)
            if name in self._listers and result.ok:
                fed = self._feed_processes(t, result.processes)
                listed_by[name] = fed
                fresh_processes |= fed

        # Forget processes missing from successive listings, and devices gone everywhere.
        gone = []
        for key in list(self.processes.series):
            if key in fresh_processes:
                self._misses.pop(key, None)
            elif listed_by:
                self._misses[key] = self._misses.get(key, 0) + 1
                if self._misses[key] >= MISSES_BEFORE_FORGET:
                    gone.append(key)
        self.processes.forget(set(gone))
        for key in gone:
            self._misses.pop(key, None)
            self._meta.pop(key, None)
        self.devices.forget({u for u in self.devices.series if u not in present})

        out: list[LeakSample] = []
        for key in self.devices.series:
            uuid = cast(str, key)  # the device detector is keyed by uuid (_feed_devices)
            a = self.devices.assess(uuid) if uuid in fresh_devices else self.devices.last(uuid)
            if a is not None:
                out.append(LeakSample("device", uuid, a.slope, a.suspected, a.confidence,
                                      a.growth_seconds, _exhaustion(a, free.get(uuid))))
        for key, p in self._meta.items():
            if self._misses.get(key):
                continue  # missing from the last listing: ended, or its pid reused
            fresh = key in fresh_processes
            a = self.processes.assess(key) if fresh else self.processes.last(key)
            if a is not None:
                out.append(LeakSample("process", p.device_uuid, a.slope, a.suspected,
                                      a.confidence, a.growth_seconds,
                                      _exhaustion(a, free.get(p.device_uuid)), pid=p.pid,
                                      name=p.name, container_id=p.container_id,
                                      pod_uid=p.pod_uid, pod_namespace=p.pod_namespace,
                                      pod_name=p.pod_name))
        return CollectorResult(ok=True, leaks=tuple(out))

    def close(self) -> None:
        pass
