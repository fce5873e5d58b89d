"""The ``amd_processes`` collector: which processes hold memory on each AMD GPU or partition.

``amdsmi_get_gpu_process_list`` reads DRM clients from ``/proc/*/fdinfo``: VRAM, GTT and CPU
bytes per process and the cumulative nanoseconds each engine spent on it. Its traps, handled
here: it lists every KFD process under every GPU (7.0.2), with zero usage on the GPUs it
does not use, so a process counts only where it holds memory or engine time; it listed
processes that had exited (until after 7.0.2), so every pid is checked against ``/proc`` and
a missing one dropped; on MI300 the monitoring process itself shows up
as a KFD process on every GPU, so the daemon's own pid (and its probe children) are left out.
The engine time becomes a busy ratio: its growth over the wall time between two listings.
Reading other users' fdinfo needs root or CAP_SYS_PTRACE; without it amdsmi lists fewer
processes, which nothing here can tell.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult, ProcessSample
from gpuprobe.probes.amd.library import clean, number
from gpuprobe.probes.amd.session import AmdDevice, AmdSession
from gpuprobe.probes.backend import Processes, Query, holders
from gpuprobe.probes.host import ProcessResolver

# pid -> (VRAM bytes, cumulative gfx engine ns)
Listing = dict[int, tuple[int | None, float | None]]


def list_processes(session: AmdSession, dev: AmdDevice, q: Query) -> Listing:
    listed = q(dev, "processes", session.lib.amdsmi_get_gpu_process_list, dev.handle)
    out: Listing = {}
    for p in listed or ():
        pid = clean(p.get("pid")) if isinstance(p, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            continue
        usage = p.get("memory_usage") or {}
        engines = p.get("engine_usage") or {}
        vram = number(usage.get("vram_mem"), 64)
        engine = number(engines.get("gfx"), 64)
        # 7.0.2 lists every KFD process under every GPU, with this GPU's usage: one that
        # holds no memory here and never ran here is another GPU's
        if not any(number(v, 64) for v in (p.get("mem"), *usage.values(), *engines.values())):
            continue
        prev = out.get(pid)  # one process with several DRM clients: keep the larger
        if prev is not None and (prev[0] or 0) >= (vram or 0):
            continue
        out[pid] = (int(vram) if vram is not None else None, engine)
    return out


def _targets(session: AmdSession, dev: AmdDevice) -> list[AmdDevice]:
    return list(dev.children) if dev.children else [dev]


def current_pids(session: AmdSession, uuid: str, deadline: float) -> set[int] | None:
    """The pids holding a GPU (or its partitions) now; None if it cannot be told."""
    pids = holders(session, uuid, deadline, lambda d: _targets(session, d),
                   lambda d, q: list_processes(session, d, q))
    return None if pids is None else pids - {os.getpid()}


class AmdProcesses(Processes[AmdSession, AmdDevice]):
    name = "amd_processes"

    def __init__(self, session: AmdSession, resolver: ProcessResolver,
                 probe_children: set[int], clock: Callable[[], float]) -> None:
        """``probe_children``: pids of gpuprobe's own probe runs, marked as such."""
        super().__init__(session, resolver, probe_children, clock)
        self.own_pid = os.getpid()
        # (device uuid, pid, start ticks) -> (gfx ns, time) of the last listing
        self._engine: dict[tuple[str, int, int | None], tuple[float, float]] = {}

    def targets(self) -> list[AmdDevice]:
        return [t for d in self.session.physical() if d.up for t in _targets(self.session, d)]

    def list(self, dev: AmdDevice, q: Query) -> Listing:
        return list_processes(self.session, dev, q)

    def samples(self, listings: dict[str, Any], errors: Counter) -> CollectorResult:
        skip = {self.own_pid, *self.probe_children}
        listed = [(uuid, {p: v for p, v in r.items() if p not in skip})
                  for uuid, r in listings.items() if r]
        host, unchecked = self.resolver.resolve_all_checked(
            [pid for _, r in listed for pid in r])
        now = self.now()
        seen: dict[tuple[str, int, int | None], tuple[float, float]] = {}
        samples = []
        for uuid, r in listed:
            for pid, (vram, engine) in r.items():
                h = host.get(pid)
                if h is None and pid in unchecked:  # no fd to look: unnamed this poll
                    samples.append(ProcessSample(uuid, pid, vram))
                    continue
                if h is None:  # exited: amdsmi 7.0.2 may list it long after
                    continue
                busy = None
                if engine is not None:
                    key = (uuid, pid, h.start_ticks)
                    prev = self._engine.get(key)
                    seen[key] = (engine, now)
                    if prev is not None and now > prev[1] and engine >= prev[0]:
                        busy = min(1.0, (engine - prev[0]) / ((now - prev[1]) * 1e9))
                samples.append(ProcessSample(uuid, pid, vram, h.name, h.start_ticks,
                                             h.container_id, h.pod_uid, busy,
                                                 h.pod_namespace, h.pod_name))
        self._engine = seen
        return CollectorResult(ok=True, processes=tuple(samples), errors=errors,
                               timestamp=now)
