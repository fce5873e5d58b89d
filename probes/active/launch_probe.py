"""The ``launch_probe`` collector: how long a kernel waits to start, and how many SMs it
reaches.

A tiny kernel, two one-warp blocks per SM, records each block's SM and start time on the
GPU's global timer, related to the host clock by calibration (``probes/active/kernels/``). On a busy
or time-sliced GPU the wait shows how long work queues, which no counter gives. Each call
runs at most one due probe; ``probes.launch.every`` sets how often a GPU is measured.
"""

from __future__ import annotations

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.probes.active.orchestrator import Orchestrator


class LaunchProbe:
    name = "launch_probe"

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def collect(self, deadline: float) -> CollectorResult:
        return self.orchestrator.tick("launch")

    def close(self) -> None:
        pass
