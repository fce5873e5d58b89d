"""What a collector is, and the built-in collectors by name with their default schedule.

The config validates ``collectors:`` against this table alone, so parsing a config imports
no vendor backend; the service's wiring (daemon/service/wiring.py) builds each collector
under the same name from its sources. deploy/gpuprobe.yaml documents the same defaults (a
test keeps them in step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gpuprobe.daemon.core.model import CollectorResult

# Which pids hold a GPU now (uuid, deadline), or None when it cannot be told: what a vendor
# backend offers the active probes' safety gates.
ProcessLister = Callable[[str, float], "set[int] | None"]


class Collector(Protocol):
    name: str

    def collect(self, deadline: float) -> CollectorResult:
        """Read the source once. ``deadline`` is a ``time.monotonic()`` value to finish by."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Builtin:
    name: str
    interval: float  # seconds
    timeout: float  # seconds: a run still going then is reported stalled
    description: str
    enabled: bool = True


BUILTIN: dict[str, Builtin] = {b.name: b for b in (
    Builtin("nvidia", 5.0, 4.0,
            "NVIDIA device telemetry through NVML (memory, thermal, power, clocks, "
            "throttling, PCIe, utilization, GPM activity, ECC)"),
    Builtin("nvidia_processes", 10.0, 8.0,
            "Processes holding memory on NVIDIA GPUs, with name, container and pod"),
    Builtin("nvidia_events", 5.0, 2.0,
            "XID errors counted by code, from an NVML event set on its own thread"),
    Builtin("amd", 5.0, 4.0,
            "AMD device telemetry through amdsmi (memory, thermal, power, clocks, "
            "throttling, PCIe, activity, ECC/RAS); partitions as their own devices"),
    Builtin("amd_processes", 10.0, 8.0,
            "Processes holding memory on AMD GPUs and partitions, with name, container, pod "
            "and engine busy ratio"),
    Builtin("amd_slow", 60.0, 30.0,
            "AMD calls that block by design (PCIe throughput: 1 s; violation status: 0.1 s "
            "per GPU), off the telemetry poll"),
    Builtin("amd_events", 5.0, 2.0,
            "AMD GPU resets and thermal-throttle events from KFD, counted, on their own "
            "thread"),
    Builtin("pcie_probe", 15.0, 45.0,
            "Measured PCIe bandwidth per direction, in a child process per run"),
    Builtin("launch_probe", 15.0, 45.0,
            "Kernel launch latency and SM reach, in a child process per run"),
    Builtin("memory_leaks", 5.0, 5.0,
            "Memory-leak detector over the device and process memory that the other "
            "collectors read (no vendor calls)"),
)}
