"""Simulated GPUs at the library boundary: one vendor-neutral world, one face per library.

``gpuprobe run --simulate`` and the tests run the real backends against these faces and the
real ``/proc`` parsing against the simulator's process tree. On the NVIDIA side the face is
the installed pynvml itself, a private copy per simulation loaded over a simulated C library
(``Simulation.libnvml``, where faults are injected), and on the AMD side the installed
amdsmi package over a simulated libamd_smi.so (``Simulation.libamdsmi``); docs/simulation.md
has the layers.
"""

from __future__ import annotations

from pathlib import Path

from gpuprobe.probes.sim.libamdsmi import SimLibAmdSmi, load_amdsmi, package_dir
from gpuprobe.probes.sim.libnvml import SimNvmlLibrary, load_pynvml
from gpuprobe.probes.sim.scenario import Scenario, ScenarioError, load
from gpuprobe.probes.sim.world import ManualClock, SimClock, SimWorld

SM_COUNTS = {"volta": 80, "turing": 72, "ampere": 108, "ada": 142, "hopper": 132,
             "blackwell": 148, "cdna3": 304, "rdna3": 96}

__all__ = ["ManualClock", "ScenarioError", "SimClock", "SimWorld", "Simulation"]


class Simulation:
    """A scenario's world and the library faces over it: ``nvml`` (pynvml over the simulated
    ``libnvml``) and ``amdsmi`` (the real amdsmi package over ``libamdsmi``, a simulated
    libamd_smi.so)."""

    def __init__(self, scenario: Scenario, clock: SimClock | ManualClock | None = None) -> None:
        self.scenario = scenario
        self.world = SimWorld(scenario, clock)
        self.libnvml = SimNvmlLibrary(self.world)  # the C library: faults, calls
        self.nvml = load_pynvml(self.libnvml)  # the real pynvml over it, for the backend
        # the C library is simulated; the amdsmi package over it is the vendor's own. Without
        # that package there is no amdsmi: the AMD backend finds it absent, as on a real host
        self.libamdsmi = SimLibAmdSmi(self.world)
        self.amdsmi = load_amdsmi(self.libamdsmi) if package_dir() is not None else None
        if self.amdsmi is not None and scenario.amdsmi.binding:
            # as the copy ROCm installs, whose version file its build writes
            setattr(self.amdsmi, "__version__", scenario.amdsmi.binding)  # noqa: B010

    @classmethod
    def from_file(cls, path: str | Path | None,
                  clock: SimClock | ManualClock | None = None) -> Simulation:
        return cls(load(path), clock)

    def probe_environment(self, uuid: str, pci_bus_id: str | None = None) -> dict | None:
        """What the simulated probe runtime needs to know of a device: the link it trains
        to under load, its current utilization and its SM count. Found by UUID, or by PCI
        address for a device whose library reports no usable UUID."""
        bus = pci_bus_id.lower()[-7:] if pci_bus_id else None
        for dev in self.world.devices:
            if dev.uuid == uuid or (bus and dev.pci_bus_id.lower().endswith(bus)):
                spec = dev.spec
                return {"generation": spec.generation, "width": spec.width,
                        "utilization": dev.state(self.world.now()).utilization,
                        "sm_count": SM_COUNTS.get(spec.architecture, 132)}
        return None

    @property
    def proc_root(self) -> str | None:
        return self.world.procfs.root if self.world.procfs else None

    @property
    def pod_logs_dir(self) -> str | None:
        """The simulated kubelet's pod log directory (its entries name the pods)."""
        return self.world.procfs.pod_logs if self.world.procfs else None

    def close(self) -> None:
        self.world.close()
