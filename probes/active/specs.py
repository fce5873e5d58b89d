"""Every probe kind's spec, by name: the one place a new kind is added (with its entry in
``daemon/core/probekinds.py`` and its kernel)."""

from __future__ import annotations

from typing import Any

from gpuprobe.daemon.core.probekinds import PROBE_KINDS
from gpuprobe.probes.active import launch, pcie
from gpuprobe.probes.active.spec import ProbeSpec

SPECS: dict[str, ProbeSpec[Any]] = {s.name: s for s in (pcie.SPEC, launch.SPEC)}
if [k.name for k in PROBE_KINDS] != list(SPECS):  # a kind in one table and not the other
    raise RuntimeError(f"probe kinds without a spec or a table entry: "
                       f"{sorted({k.name for k in PROBE_KINDS} ^ SPECS.keys())}")


def probe_values(probe: str, result: dict[str, Any]) -> dict[str, float]:
    """The numbers a child of kind ``probe`` reported, as the metrics want them."""
    return SPECS[probe].values(result)
