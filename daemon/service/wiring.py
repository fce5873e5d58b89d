"""What the collectors are built from, made in one place.

:class:`Sources` holds the library sessions, the /proc reader, the probe children and the
process listers, the snapshot's read-only view and the clock. :data:`BUILDERS` builds each
built-in collector (by the names of daemon/core/collectors.py) and hands its constructor
what it needs, so a collector's dependencies read from its constructor. A session is made
the first time a collector asks for it, and a builder imports its collector's module only
when called: a disabled vendor's backend is never imported, its library never loaded.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpuprobe.daemon.core.collectors import BUILTIN, Collector, ProcessLister
from gpuprobe.daemon.core.config import Config
from gpuprobe.daemon.core.probekinds import PROBE_KINDS
from gpuprobe.daemon.core.state import View

if TYPE_CHECKING:
    from gpuprobe.probes.active.orchestrator import Orchestrator
    from gpuprobe.probes.amd.session import AmdSession
    from gpuprobe.probes.host import ProcessResolver
    from gpuprobe.probes.nvidia.events import XidWatcher
    from gpuprobe.probes.nvidia.session import NvmlSession

log = logging.getLogger("gpuprobe")


class Sources:
    """``simulation`` brings the simulated NVML and amdsmi, its /proc tree and its clock;
    without it the libraries are the real ones (amdsmi imported by the AMD backend itself
    once an isolated child has shown that it loads) and /proc is ``host.proc_root``.
    ``nvml`` replaces the pynvml module (a benchmark's counting wrapper)."""

    def __init__(self, config: Config, snapshot: Callable[[], View], *, nvml: Any = None,
                 simulation: Any = None) -> None:
        self.config = config
        self.snapshot = snapshot
        self.simulation = simulation
        self.proc_root = simulation.proc_root if simulation else config.host.proc_root
        self.pod_logs_dir = simulation.pod_logs_dir if simulation else config.host.pod_logs_dir
        self.probe_children: set[int] = set()  # pids of running probe children
        self.listers: dict[str, ProcessLister] = {}  # vendor -> who holds one of its GPUs
        self._nvml_library = simulation.nvml if simulation else nvml
        self._amdsmi_face = getattr(simulation, "amdsmi", None)
        self._epoch = time.time()
        self._made: list[Any] = []  # in the order made, for close()
        self._nvml: NvmlSession | None = None
        self._amd: AmdSession | None = None
        self._processes: ProcessResolver | None = None
        self._xid: XidWatcher | None = None
        self._orchestrator: Orchestrator | None = None

    def now(self) -> float:
        """Unix seconds, or under simulation the scenario's clock on the same scale (it
        starts at the daemon's start and runs time_acceleration times faster)."""
        if self.simulation is not None:
            return self._epoch + self.simulation.world.clock.now()
        return time.time()

    def _keep(self, obj: Any) -> Any:
        self._made.append(obj)
        return obj

    def nvml_library(self) -> Any:
        if self._nvml_library is None:
            import pynvml

            self._nvml_library = pynvml
        return self._nvml_library

    def nvml_session(self) -> NvmlSession:
        if self._nvml is None:
            from gpuprobe.probes.nvidia.processes import current_pids
            from gpuprobe.probes.nvidia.session import NvmlSession

            self._nvml = self._keep(NvmlSession(self.nvml_library(), self.config.nvidia))
            # The probes ask which processes hold a GPU before and after each run.
            self.listers["nvidia"] = functools.partial(current_pids, self._nvml)
        return self._nvml

    def amd_session(self) -> AmdSession:
        if self._amd is None:
            from gpuprobe.probes.amd.processes import current_pids
            from gpuprobe.probes.amd.session import AmdSession

            self._amd = self._keep(AmdSession(self._amdsmi_face, self.config.amd))
            self.listers["amd"] = functools.partial(current_pids, self._amd)
        return self._amd

    def processes(self) -> ProcessResolver:
        if self._processes is None:
            from gpuprobe.probes.host import ProcessResolver
            from gpuprobe.probes.pods import PodNames

            self._processes = self._keep(ProcessResolver(
                self.proc_root, pods=PodNames(self.pod_logs_dir or "")))
        return self._processes

    def xid_watcher(self) -> XidWatcher:
        if self._xid is None:
            from gpuprobe.probes.nvidia.events import XidWatcher

            self._xid = self._keep(XidWatcher(self.nvml_session()))
        return self._xid

    def orchestrator(self) -> Orchestrator:
        """The one scheduler of every probe kind (one probe at a time on a host)."""
        if self._orchestrator is None:
            from gpuprobe.probes.active.orchestrator import Orchestrator

            sim = self.simulation
            self._orchestrator = self._keep(Orchestrator(
                self.config.probes, self.snapshot, self.probe_children, self.listers,
                sim_environment=sim.probe_environment if sim is not None else None))
        return self._orchestrator

    def close(self) -> None:
        made, self._made = self._made, []
        for obj in made:
            close = getattr(obj, "close", None)
            if close is not None:
                close()


# -- the built-in collectors, each from what it needs ---------------------------------------

def _nvidia(s: Sources) -> Collector:
    from gpuprobe.probes.nvidia.telemetry import NvidiaTelemetry

    return NvidiaTelemetry(s.nvml_session(), s.now, gpm=s.config.nvidia.gpm)


def _nvidia_processes(s: Sources) -> Collector:
    from gpuprobe.probes.nvidia.processes import NvidiaProcesses

    return NvidiaProcesses(s.nvml_session(), s.processes(), s.probe_children, s.now)


def _nvidia_events(s: Sources) -> Collector:
    from gpuprobe.probes.nvidia.events import NvidiaEvents

    return NvidiaEvents(s.nvml_session(), s.xid_watcher(), s.config.nvidia.xid_codes)


def _amd(s: Sources) -> Collector:
    from gpuprobe.probes.amd.telemetry import AmdTelemetry

    return AmdTelemetry(s.amd_session(), s.now, ras_interval=s.config.amd.ras_interval)


def _amd_processes(s: Sources) -> Collector:
    from gpuprobe.probes.amd.processes import AmdProcesses

    return AmdProcesses(s.amd_session(), s.processes(), s.probe_children, s.now)


def _amd_slow(s: Sources) -> Collector:
    from gpuprobe.probes.amd.slow import AmdSlow

    return AmdSlow(s.amd_session(), s.snapshot, s.config.collectors["amd_slow"].interval)


def _amd_events(s: Sources) -> Collector:
    from gpuprobe.probes.amd.events import AmdEvents

    return AmdEvents(s.amd_session())


def _probe(name: str) -> Callable[[Sources], Collector]:
    """The builder of the collector of probe kind ``name`` (one class for every kind)."""
    def build(s: Sources) -> Collector:
        from gpuprobe.probes.active.collector import ProbeCollector
        from gpuprobe.probes.active.specs import SPECS

        return ProbeCollector(SPECS[name], s.orchestrator())
    return build


def _memory_leaks(s: Sources) -> Collector:
    from gpuprobe.daemon.analysis.memory_leaks import MemoryLeaks

    return MemoryLeaks(s.config.leaks, s.snapshot)


BUILDERS: dict[str, Callable[[Sources], Collector]] = {
    "nvidia": _nvidia,
    "nvidia_processes": _nvidia_processes,
    "nvidia_events": _nvidia_events,
    "amd": _amd,
    "amd_processes": _amd_processes,
    "amd_slow": _amd_slow,
    "amd_events": _amd_events,
    **{kind.collector: _probe(kind.name) for kind in PROBE_KINDS},
    "memory_leaks": _memory_leaks,
}
if BUILDERS.keys() != BUILTIN.keys():  # a collector added to one table and not the other
    raise RuntimeError(f"collectors without a builder or an entry: "
                       f"{sorted(BUILDERS.keys() ^ BUILTIN.keys())}")


def build(sources: Sources, names: list[str]) -> list[Collector]:
    """The collectors ``names``, in the table's order."""
    return [BUILDERS[n](sources) for n in BUILTIN if n in names]
