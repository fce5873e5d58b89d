"""The ``nvidia_processes`` collector: which processes hold memory on each GPU.

NVML lists compute, graphics and MPS clients with their used memory (bytes); the host's
``/proc`` adds name, start time (to tell a reused pid apart), container and pod. On a GPU in
MIG mode the instances list their own processes and the parent lists none, so nothing is
counted twice. Process lists walk every context in the driver, so this runs less often than
the telemetry collector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult, ProcessSample
from gpuprobe.probes.backend import Processes, Query, holders
from gpuprobe.probes.nvidia.session import NvDevice, NvmlSession

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

    def list(self, dev: NvDevice, q: Query) -> Mapping[int, Any]:
        return list_processes(self.session, dev, q)

    def samples(self, listings: dict[str, Any], errors: Counter) -> CollectorResult:
        results = listings
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
