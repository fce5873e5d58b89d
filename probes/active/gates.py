"""The safety gates: whether a GPU may be probed now, and if not, why.

In order: the device is up; it is not a MIG instance or a GPU in MIG mode (skip reason
"mig"), nor an AMD partition or a partitioned AMD GPU ("partitioned"); its compute mode
is not exclusive or prohibited; no MPS server runs on it; its temperature is at least
``min_thermal_margin`` below the slowdown threshold; something can probe it (a runtime for
its vendor); and, unless forced, its utilization is at most ``max_utilization`` and (by
default) no other process holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from gpuprobe.daemon.core.config import ProbesConfig
from gpuprobe.daemon.core.model import DeviceSample, ProcessSample

SKIP_REASONS = ("device_down", "mig", "partitioned", "compute_mode", "mps", "thermal", "busy",
                "processes", "no_runtime")
UNSAFE_COMPUTE_MODES = ("exclusive_process", "exclusive_thread", "prohibited")


def gate(cfg: ProbesConfig, d: DeviceSample, devices: list[DeviceSample],
         processes: list[ProcessSample], children: Collection[int],
         has_runtime: Callable[[DeviceSample], bool], force: bool = False) -> str | None:
    """Why this device must not be probed now (one of SKIP_REASONS), or None.
    ``children`` are the pids of running probe children (not other processes);
    ``has_runtime`` is asked only once the gates before it passed."""
    uuid = d.identity.uuid
    if not d.up:
        return "device_down"
    if d.identity.parent_uuid or any(x.identity.parent_uuid == uuid for x in devices):
        return "partitioned" if d.identity.vendor == "amd" else "mig"
    if d.compute_mode in UNSAFE_COMPUTE_MODES:
        return "compute_mode"
    others = [p for p in processes if p.device_uuid == uuid and p.pid not in children]
    if any((p.name or "").startswith("nvidia-cuda-mps") for p in others):
        return "mps"
    temps, limits = d.thermal.temperatures, d.thermal.thresholds
    margins = [limits[(sensor, "slowdown")] - t for sensor, t in temps.items()
               if (sensor, "slowdown") in limits]  # NVIDIA: gpu; AMD: edge, hotspot, ...
    if margins and min(margins) < cfg.min_thermal_margin:
        return "thermal"
    if not has_runtime(d):
        return "no_runtime"
    if force:
        return None
    if (d.utilization.get("gpu") or 0.0) > cfg.max_utilization:
        return "busy"
    if cfg.skip_when_processes and others:
        return "processes"
    return None
