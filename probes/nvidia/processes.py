"""The ``nvidia_processes`` collector: which processes hold memory on each GPU.

NVML lists compute, graphics and MPS clients with their used memory (bytes); the host's
``/proc`` adds name, start time (to tell a reused pid apart), container and pod. On a GPU in
MIG mode the instances list their own processes and the parent lists none, so nothing is
counted twice. Process lists walk every context in the driver, so this runs less often than
the telemetry collector.

Each process's busy ratio is its SM utilization in the driver's latest sample period (about
a sixth of a second), from ``nvmlDeviceGetProcessesUtilizationInfo`` or, on drivers before
it, ``nvmlDeviceGetProcessUtilization``. The driver keeps samples only of processes that ran
in a period, and a call returns those newer than the last one seen (NOT_FOUND if none): a
listed process without one was idle, 0. A MIG instance cannot tell: absent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult, ProcessSample
from gpuprobe.probes.backend import Processes, Query, holders
from gpuprobe.probes.nvidia import structs
from gpuprobe.probes.nvidia.session import NvDevice, NvmlSession

# the newer call first; the driver's NOT_FOUND (and pynvml's raise of SUCCESS on an empty
# first call) mean "no samples since the last seen", not an error
UTILIZATION_CALLS = ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization")
NO_SAMPLES = frozenset({0, 6})  # NVML_SUCCESS, NVML_ERROR_NOT_FOUND
# pid -> (used bytes, busy ratio)
Listing = dict[int, tuple[int | None, float | None]]

LIST_CALLS = (
    ("processes.compute", "nvmlDeviceGetComputeRunningProcesses"),
    ("processes.graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ("processes.mps", "nvmlDeviceGetMPSComputeRunningProcesses"),
)


def list_processes(session: NvmlSession, dev: NvDevice, q: Query) -> dict[int, int | None]:
    """pid -> used bytes (None where NVML cannot tell) for one device."""
    out: dict[int, int | None] = {}
    for key, fn_name in LIST_CALLS:
        fn = getattr(session.lib, fn_name, None)
        if fn is None:
            continue
        listed = q(dev, key, fn, dev.handle)
        if not listed:
            continue
        if not out:
            out = {p.pid: p.usedGpuMemory for p in listed}
            continue
        for p in listed:  # a process in two lists (compute and graphics): keep the larger
            used = p.usedGpuMemory
            prev = out.get(p.pid)
            out[p.pid] = used if prev is None else max(prev, used or 0)
    return out


def _newer(lib: Any, fn: Callable[..., Any]) -> Callable[[Any, int], list]:
    """``fn(handle, last_seen)`` with "no samples newer" as an empty list."""
    def call(handle: Any, last_seen: int) -> list:
        try:
            return fn(handle, last_seen)
        except lib.NVMLError as e:
            if getattr(e, "value", None) in NO_SAMPLES:
                return []
            raise
    return call


def utilization(session: NvmlSession, dev: NvDevice, q: Query,
                pids: Collection[int]) -> dict[int, float] | None:
    """pid -> SM busy ratio of its latest sample since the last call, for those of ``pids``
    that ran; None where the device cannot tell (or the call failed this time). Only their
    samples move the last seen time, so that one garbage entry cannot hide later samples."""
    lib = session.lib
    last_seen = dev.state.get("util_seen", 0)
    calls: list[tuple[str | Callable[..., Any], tuple]] = [
        (_newer(lib, fn) if fn is not None else name, (dev.handle, last_seen))
        for name in UTILIZATION_CALLS for fn in (getattr(lib, name, None),)]
    samples = q.first(dev, "processes.utilization", calls)
    if samples is None:
        return None
    latest: dict[int, tuple[int, int]] = {}  # pid -> (timestamp, sm %)
    if samples:  # read by the answering call's structure: the older call has its own
        read = structs.reader(type(samples[0]), ("pid", "timeStamp", "smUtil"))
        for s in samples:
            pid, stamp, sm = read(s)
            if pid in pids and 0 <= sm <= 100 and stamp > latest.get(pid, (-1, 0))[0]:
                latest[pid] = (int(stamp), int(sm))
    if latest:
        dev.state["util_seen"] = max(last_seen, *(stamp for stamp, _ in latest.values()))
    return {pid: sm / 100 for pid, (_, sm) in latest.items()}


def _targets(session: NvmlSession, dev: NvDevice) -> list[NvDevice]:
    """A GPU in MIG mode lists nothing itself: its instances list their own processes."""
    return [d for d in session.known() if d.parent is dev] if dev.mig_enabled else [dev]


def current_pids(session: NvmlSession, uuid: str, deadline: float) -> set[int] | None:
    """The pids holding a GPU (or its MIG instances) now; None if it cannot be told."""
    return holders(session, uuid, deadline, lambda d: _targets(session, d),
                   lambda d, q: list_processes(session, d, q))


class NvidiaProcesses(Processes[NvmlSession, NvDevice]):
    name = "nvidia_processes"

    def targets(self) -> list[NvDevice]:
        return [d for d in self.session.known() if d.up and not d.mig_enabled]

    def list(self, dev: NvDevice, q: Query) -> Listing:
        used = list_processes(self.session, dev, q)
        if not used:
            return {}
        busy = utilization(self.session, dev, q, used)
        if busy is None:
            return {pid: (b, None) for pid, b in used.items()}
        return {pid: (b, busy.get(pid, 0.0)) for pid, b in used.items()}

    def samples(self, listings: dict[str, Any], errors: Counter) -> CollectorResult:
        results = listings
        if self.probe_children:  # gpuprobe's own probe, not a user's process
            results = {u: {p: v for p, v in r.items() if p not in self.probe_children}
                       if isinstance(r, dict) else r for u, r in results.items()}
        listed = [(uuid, r) for uuid, r in results.items() if r]
        host = self.resolver.resolve_all([pid for _, r in listed for pid in r])
        samples = []
        for uuid, r in listed:
            for pid, (used, busy) in r.items():
                h = host.get(pid)
                if h is None:
                    samples.append(ProcessSample(uuid, pid, used, busy_ratio=busy))
                else:
                    samples.append(ProcessSample(uuid, pid, used, h.name, h.start_ticks,
                                                 h.container_id, h.pod_uid, busy,
                                                 h.pod_namespace, h.pod_name))
        return CollectorResult(ok=True, processes=tuple(samples), errors=errors,
                               timestamp=self.now())
