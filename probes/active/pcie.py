"""The PCIe probe: measured host-device bandwidth over each GPU's PCIe link.

Pinned host memory, copies on the copy engine timed with events, after a warm-up, the median
of several repetitions (``probes/active/kernels/``), compared with the trained link's theoretical
rate. Each call of its collector (``pcie_probe``) runs at most one due probe;
``probes.pcie.every`` sets how often a GPU is measured. See ``probes/active/gates.py`` for
the safety rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpuprobe.daemon.core.config import PcieProbeConfig
from gpuprobe.daemon.core.model import pcie_link_bytes_per_second
from gpuprobe.daemon.core.probekinds import DIRECTIONS, PCIE
from gpuprobe.probes.active.spec import ProbeSpec


def request(c: PcieProbeConfig) -> dict[str, Any]:
    return {"size": c.buffer_size, "copies": c.copies, "repetitions": c.repetitions}


def values(result: Mapping[str, Any]) -> dict[str, float]:
    """The rates the child measured, the trained link's rate, and their ratios."""
    out = {k: float(result[f"{k}_bytes_per_second"]) for k in DIRECTIONS}
    link = result.get("link") or {}
    rate = pcie_link_bytes_per_second(link.get("generation"), link.get("width"))
    if rate:
        out["link_bytes_per_second"] = rate
        out["link_generation"], out["link_width"] = link["generation"], link["width"]
        for k in DIRECTIONS:
            out[f"{k}_ratio"] = out[k] / rate
    return out


def row(v: Mapping[str, Any], gpu_seconds: float) -> list[str]:
    link = v.get("link") or {}
    rate = pcie_link_bytes_per_second(link.get("generation"), link.get("width"))
    h2d, d2h = v["host_to_device_bytes_per_second"], v["device_to_host_bytes_per_second"]
    ratio = (lambda x: f"{x / rate:.0%}") if rate else (lambda x: "-")
    return [f"{h2d / 1e9:.1f}", f"{d2h / 1e9:.1f}",
            f"Gen{link.get('generation')} x{link.get('width')}" if link else "-",
            f"{rate / 1e9:.1f}" if rate else "-", ratio(h2d), ratio(d2h), f"{gpu_seconds:.2f}s"]


SPEC = ProbeSpec(PCIE, lambda c: c.pcie, request, values,
                 ("H2D GB/s", "D2H GB/s", "LINK", "LINK GB/s", "H2D/LINK", "D2H/LINK",
                  "GPU TIME"), row)
