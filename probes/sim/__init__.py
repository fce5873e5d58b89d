"""Simulated GPUs at the library boundary: one vendor-neutral world, one face per library.

``gpuprobe run --simulate`` and the tests run the real backends against these faces and the
real ``/proc`` parsing against the simulator's process tree.
"""

from __future__ import annotations

from pathlib import Path

from .nvml import SimNvml
from .scenario import Scenario, ScenarioError, load
from .world import ManualClock, SimClock, SimWorld

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

    @property
    def proc_root(self) -> str | None:
        return self.world.procfs.root if self.world.procfs else None

    def close(self) -> None:
        self.world.close()
