"""The ``pcie_probe`` collector: measured host-device bandwidth over each GPU's PCIe link.

Pinned host memory, copies on the copy engine timed with events, after a warm-up, the median
of several repetitions (``probes/active/kernels/``), compared with the trained link's theoretical
rate. Each call runs at most one due probe; ``probes.pcie.every`` sets how often a GPU is
measured. See ``probes/active/orchestrator.py`` for the safety rules.
"""

from __future__ import annotations

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.probes.active.orchestrator import Orchestrator


class PcieProbe:
    name = "pcie_probe"

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def collect(self, deadline: float) -> CollectorResult:
        return self.orchestrator.tick("pcie")

    def close(self) -> None:
        pass
