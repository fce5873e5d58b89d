"""The ``nvidia_processes`` collector: which processes hold memory on each GPU.

NVML lists compute, graphics and MPS clients with their used memory (bytes); the host's
``/proc`` adds name, start time (to tell a reused pid apart), container and pod. On a GPU in
MIG mode the instances list their own processes and the parent lists none, so nothing is
counted twice. Process lists walk every context in the driver, so this runs less often than
the telemetry collector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gpuprobe.daemon.core.model import CollectorResult, ProcessSample
from gpuprobe.probes.host import ProcessResolver
from gpuprobe.probes.nvidia.session import (
    DeviceLost,
    LibraryDown,
    NvDevice,
    NvmlSession,
    Query,
    run_on_devices,
)

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


def current_pids(session: NvmlSession, uuid: str, deadline: float) -> set[int] | None:
    """The pids holding a GPU (or its MIG instances) now; None if it cannot be told."""
    dev = session.devices.get(uuid)
    if dev is None or not session.up or not dev.up:
        return None
    targets = [d for d in session.known() if d.parent is dev] if dev.mig_enabled else [dev]
    q = Query(session, Counter())
    results, stuck = run_on_devices(targets, lambda d: list_processes(session, d, q), deadline)
    if stuck or any(isinstance(r, BaseException) or r is None for r in results.values()):
        return None
    return {pid for r in results.values() for pid in r}


class NvidiaProcesses:
    name = "nvidia_processes"

    def __init__(self, session: NvmlSession, resolver: ProcessResolver,
                 probe_children: set[int], clock: Callable[[], float]) -> None:
        """``probe_children``: pids of gpuprobe's own probe runs, marked as such."""
        self.session = session
        self.resolver = resolver
        self.probe_children = probe_children
        self.now = clock

    def _list(self, dev: NvDevice, q: Query) -> dict[int, int | None] | None:
        try:
            return list_processes(self.session, dev, q)
        except DeviceLost as e:
            self.session._lose(dev, str(e))
            return None

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=session.absent, errors=errors)
        q = Query(session, errors)
        targets = [d for d in session.known() if d.up and not d.mig_enabled]
        results, _stuck = run_on_devices(targets, lambda d: self._list(d, q), deadline)
        for r in results.values():
            if isinstance(r, LibraryDown):
                session.mark_down(r.__cause__ or r)
                return CollectorResult(ok=False, errors=errors)
            if isinstance(r, BaseException):
                raise r
        if self.probe_children:  # gpuprobe's own probe, not a user's process
            results = {u: {p: m for p, m in r.items() if p not in self.probe_children}
                       if isinstance(r, dict) else r for u, r in results.items()}
        listed = [(uuid, r) for uuid, r in results.items() if r]
        host = self.resolver.resolve_all([pid for _, r in listed for pid in r])
        samples = []
        for uuid, r in listed:
            for pid, used in r.items():
                h = host.get(pid)
                if h is None:
                    samples.append(ProcessSample(uuid, pid, used))
                else:
                    samples.append(ProcessSample(uuid, pid, used, h.name, h.start_ticks,
                                                 h.container_id, h.pod_uid))
        return CollectorResult(ok=True, processes=tuple(samples), errors=errors,
                               timestamp=self.now())

    def close(self) -> None:
        pass  # the shared session is closed with the context
