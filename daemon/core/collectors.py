"""The built-in collectors by name: the module that implements each and its default schedule.

The config validates ``collectors:`` against this table alone, so parsing a config imports
no vendor backend; ``registry.load_builtin`` imports the modules, whose classes register
themselves under these names. deploy/gpuprobe.yaml documents the same defaults (a test keeps
them in step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    name: str
    module: str
    interval: float  # seconds
    timeout: float  # seconds: a run still going then is reported stalled
    description: str
    enabled: bool = True


BUILTIN: dict[str, Builtin] = {b.name: b for b in (
    Builtin("nvidia", "gpuprobe.probes.nvidia.telemetry", 5.0, 4.0,
            "NVIDIA device telemetry through NVML (memory, thermal, power, clocks, "
            "throttling, PCIe, utilization, GPM activity, ECC)"),
    Builtin("nvidia_processes", "gpuprobe.probes.nvidia.processes", 10.0, 8.0,
            "Processes holding memory on NVIDIA GPUs, with name, container and pod"),
    Builtin("nvidia_events", "gpuprobe.probes.nvidia.events", 5.0, 2.0,
            "XID errors counted by code, from an NVML event set on its own thread"),
    Builtin("amd", "gpuprobe.probes.amd.telemetry", 5.0, 4.0,
            "AMD device telemetry through amdsmi (memory, thermal, power, clocks, "
            "throttling, PCIe, activity, ECC/RAS); partitions as their own devices"),
    Builtin("amd_processes", "gpuprobe.probes.amd.processes", 10.0, 8.0,
            "Processes holding memory on AMD GPUs and partitions, with name, container, pod "
            "and engine busy ratio"),
    Builtin("amd_slow", "gpuprobe.probes.amd.slow", 60.0, 30.0,
            "AMD calls that block by design (PCIe throughput: 1 s; violation status: 0.1 s "
            "per GPU), off the telemetry poll"),
    Builtin("amd_events", "gpuprobe.probes.amd.events", 5.0, 2.0,
            "AMD GPU resets and thermal-throttle events from KFD, counted, on their own "
            "thread"),
    Builtin("pcie_probe", "gpuprobe.probes.active.pcie_probe", 15.0, 45.0,
            "Measured PCIe bandwidth per direction, in a child process per run"),
    Builtin("launch_probe", "gpuprobe.probes.active.launch_probe", 15.0, 45.0,
            "Kernel launch latency and SM reach, in a child process per run"),
    Builtin("memory_leaks", "gpuprobe.daemon.analysis.memory_leaks", 5.0, 5.0,
            "Memory-leak detector over the device and process memory that the other "
            "collectors read (no vendor calls)"),
)}
