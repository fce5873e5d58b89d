"""Simulated GPUs at the library boundary: one vendor-neutral world, one face per library.

``gpuprobe run --simulate`` and the tests run the real backends against these faces and the
real ``/proc`` parsing against the simulator's process tree.
"""

from __future__ import annotations

from pathlib import Path

from .nvml import SimNvml
from .scenario import Scenario, ScenarioError, load
from .world import ManualClock, SimClock, SimWorld

SM_COUNTS = {"volta": 80, "turing": 72, "ampere": 108, "ada": 142, "hopper": 132,
             "blackwell": 148, "cdna3": 304}

__all__ = ["ManualClock", "ScenarioError", "SimClock", "SimWorld", "Simulation"]


class Simulation:
    """A scenario's world and the library faces over it."""

    def __init__(self, scenario: Scenario, clock: SimClock | ManualClock | None = None) -> None:
        self.scenario = scenario
        self.world = SimWorld(scenario, clock)
        self.nvml = SimNvml(self.world)

    @classmethod
    def from_file(cls, path: str | Path | None,
                  clock: SimClock | ManualClock | None = None) -> Simulation:
        return cls(load(path), clock)

    def probe_environment(self, uuid: str) -> dict | None:
        """What the simulated probe runtime needs to know of a device: the link it trains
        to under load, its current utilization and its SM count."""
        for dev in self.world.devices:
            if dev.uuid == uuid:
                spec = dev.spec
                return {"generation": spec.generation, "width": spec.width,
                        "utilization": dev.state(self.world.now()).utilization,
                        "sm_count": SM_COUNTS.get(spec.architecture, 132)}
        return None

    @property
    def proc_root(self) -> str | None:
        return self.world.procfs.root if self.world.procfs else None

    def close(self) -> None:
        self.world.close()
