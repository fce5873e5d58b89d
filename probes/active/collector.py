"""The collector of one probe kind (``pcie_probe``, ``launch_probe``, ...): each call runs at
most one due probe of its kind through the orchestrator, which all kinds share (one probe
at a time on a host)."""

from __future__ import annotations

from typing import Any

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.probes.active.orchestrator import Orchestrator
from gpuprobe.probes.active.spec import ProbeSpec


class ProbeCollector:
    def __init__(self, spec: ProbeSpec[Any], orchestrator: Orchestrator) -> None:
        self.spec = spec
        self.name = spec.collector
        self.orchestrator = orchestrator

    def collect(self, deadline: float) -> CollectorResult:
        return self.orchestrator.tick(self.spec.name)

    def close(self) -> None:
        pass
