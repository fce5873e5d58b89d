"""Vendor-neutral records of what a GPU reports.

Backends turn vendor library values into these records; everything above a backend (state,
exporter, CLI) reads only these. Units are base units: bytes, seconds, celsius, watts,
joules, hertz, and ratios from 0 to 1. A value the device does not report is ``None`` (or
missing from a mapping), never 0. Records are frozen; mappings inside them are built once by
the backend and never mutated afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# Named throttle reasons shared by every vendor (the `reason` label).
THROTTLE_REASONS = (
    "gpu_idle",
    "applications_clocks",
    "power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
    "display_clocks",
    "current_limit",
    "memory_thermal",
)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a device is. ``index`` is the ``gpu`` label: "0", "0/7" for NVIDIA MIG instance 7,
    "0/1" for AMD partition 1; each vendor counts from 0, so ``name`` (vendor:index) or the
    UUID is what tells two GPUs of a host apart."""

    uuid: str
    vendor: str
    index: str
    model: str | None = None
    pci_bus_id: str | None = None
    serial: str | None = None
    driver_version: str | None = None
    firmware_version: str | None = None
    architecture: str | None = None
    compute_capability: str | None = None
    parent_uuid: str | None = None
    # NVIDIA: the MIG profile ("3g.40gb"); AMD: the compute partition mode ("SPX", "CPX")
    partition: str | None = None
    memory_partition: str | None = None  # AMD: "NPS1", "NPS4"

    @property
    def name(self) -> str:
        """What a person sees: ``<vendor>:<index>`` ("nvidia:0", "nvidia:4/1" for a MIG
        instance, "amd:0/1" for a partition), unique on a host where the bare index is not
        (NVIDIA 0 and AMD 0)."""
        return f"{self.vendor}:{self.index}"

    @property
    def order(self) -> tuple[str, int, int, str]:
        """The one order GPUs are listed in: by vendor, then index (numerically), each
        instance/partition right after its parent."""
        head, _, sub = self.index.partition("/")
        return (self.vendor, _number(head), _number(sub) if sub else -1, self.index)


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 1 << 30


@dataclass(frozen=True, slots=True)
class Memory:
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    reserved_bytes: int | None = None
    bar1_total_bytes: int | None = None
    bar1_used_bytes: int | None = None
    # Host memory mapped for the device (AMD GTT); most of an APU's memory lives here.
    gtt_total_bytes: int | None = None
    gtt_used_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Thermal:
    # sensor ("gpu", "memory", "hotspot", ...) -> celsius
    temperatures: Mapping[str, float] = field(default_factory=dict)
    # (sensor, threshold) -> celsius; threshold is "slowdown", "shutdown" or "max_operating"
    thresholds: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Power:
    draw_watts: float | None = None
    limit_watts: float | None = None  # the limit enforced now
    energy_joules: float | None = None
    # What the limit may be set to, and what it is out of the box: "the limit was lowered"
    # is limit_watts below limit_default_watts.
    limit_min_watts: float | None = None
    limit_max_watts: float | None = None
    limit_default_watts: float | None = None


@dataclass(frozen=True, slots=True)
class Clocks:
    # clock domain ("sm", "memory", "graphics", "video") -> hertz
    current: Mapping[str, float] = field(default_factory=dict)
    maximum: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Throttle:
    # Reasons the device can report; each gets a 0/1 series. Empty when unsupported.
    supported: frozenset[str] = frozenset()
    active: frozenset[str] = frozenset()
    # reason -> cumulative seconds the device spent throttled for it
    seconds_total: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pcie:
    generation: int | None = None
    width: int | None = None
    max_generation: int | None = None
    max_width: int | None = None
    tx_bytes_total: float | None = None
    rx_bytes_total: float | None = None
    replays_total: int | None = None
    recoveries_total: int | None = None
    naks_received_total: int | None = None
    naks_sent_total: int | None = None
    # direction ("tx", "rx") -> bytes per second measured over a short window (AMD's
    # pci_throughput samples one second); a sampled rate, not a counter.
    sampled_bytes_per_second: Mapping[str, float] = field(default_factory=dict)
    replay_rollovers_total: int | None = None
    # bytes over the link both ways as the device counts them (AMD MI300's
    # pcie_bandwidth_acc), since gpuprobe first saw the device
    transferred_bytes_total: float | None = None
    # kind (PCIE_ERROR_KINDS) -> errors counted by the device since the driver loaded
    errors: Mapping[str, int] = field(default_factory=dict)


# PCIe error counters by kind (the `kind` label of gpuprobe_pcie_errors_total).
PCIE_ERROR_KINDS = ("correctable", "receiver_error", "bad_tlp", "bad_dllp", "non_fatal",
                    "fatal", "unsupported_request", "lcrc", "lane")

# GPU-to-GPU link error counters by kind (the `kind` label of the link error families).
LINK_ERROR_KINDS = ("crc", "replay", "recovery")


@dataclass(frozen=True, slots=True)
class Link:
    """One GPU-to-GPU link (an NVLink, an XGMI link) as the device reports it."""

    up: bool | None = None
    tx_bytes_total: float | None = None  # bytes sent since gpuprobe first saw the device
    rx_bytes_total: float | None = None
    # kind (LINK_ERROR_KINDS) -> errors since the driver loaded
    errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Interconnect:
    """A device's GPU-to-GPU links. ``links`` holds the links the device has (one that is
    not connected reads up=False); the totals are the device's own where it counts them
    (NVIDIA GPM), else the sums over its links."""

    kind: str | None = None  # "nvlink" or "xgmi"
    version: float | None = None  # NVLink version (4.0 on Hopper, 2.2 and 3.1 exist)
    link_width: int | None = None  # lanes per link (XGMI)
    # one link's signalling rate per direction (XGMI: speed x width / 8)
    link_speed_bytes_per_second: float | None = None
    links: Mapping[str, Link] = field(default_factory=dict)  # link index ("0".."17") -> link
    tx_bytes_total: float | None = None
    rx_bytes_total: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)  # kind -> over all links


# What a GPU's driver says must be done to it (the `action` label of
# gpuprobe_recovery_action): NVML's nvmlGpuRecoveryAction_t.
RECOVERY_ACTIONS = ("none", "gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset",
                    "recover_imex_domain", "bus_reset", "system_reboot")


@dataclass(frozen=True, slots=True)
class Recovery:
    reset_required: bool | None = None  # the GPU must be reset before it is usable again
    drain_recommended: bool | None = None  # drain its work, then reset
    action: str | None = None  # one of RECOVERY_ACTIONS


@dataclass(frozen=True, slots=True)
class Activity:
    """Profiling-class ratios averaged over the last poll interval (NVIDIA GPM on Hopper+)."""

    graphics_engine: float | None = None
    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None


@dataclass(frozen=True, slots=True)
class Errors:
    ecc_enabled: bool | None = None
    ecc_corrected_total: int | None = None
    ecc_uncorrected_total: int | None = None
    ecc_corrected_lifetime_total: int | None = None
    ecc_uncorrected_lifetime_total: int | None = None
    ecc_deferred_total: int | None = None
    # (block, severity) -> errors; block is the hardware block ("umc", "gfx", ...), severity
    # "corrected", "uncorrected" or "deferred"
    ecc_blocks: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # cause ("correctable", "uncorrectable") -> rows
    remapped_rows: Mapping[str, int] = field(default_factory=dict)
    remap_pending: bool | None = None
    remap_failed: bool | None = None
    # cause ("single_bit", "double_bit") -> pages
    retired_pages: Mapping[str, int] = field(default_factory=dict)
    retired_pages_pending: bool | None = None


@dataclass(frozen=True, slots=True)
class DeviceSample:
    identity: DeviceIdentity
    up: bool
    down_reason: str | None = None
    memory: Memory = field(default_factory=Memory)
    thermal: Thermal = field(default_factory=Thermal)
    power: Power = field(default_factory=Power)
    clocks: Clocks = field(default_factory=Clocks)
    throttle: Throttle = field(default_factory=Throttle)
    pcie: Pcie = field(default_factory=Pcie)
    # engine ("gpu", "memory", "encoder", "decoder", "multimedia") -> busy ratio
    utilization: Mapping[str, float] = field(default_factory=dict)
    # accelerator complex die ("0".."7", AMD MI300 XCCs) -> busy ratio
    xcc_utilization: Mapping[str, float] = field(default_factory=dict)
    activity: Activity = field(default_factory=Activity)
    errors: Errors = field(default_factory=Errors)
    performance_state: int | None = None
    # "default", "exclusive_process" or "prohibited": who may create a context on the GPU
    compute_mode: str | None = None
    # fan index ("0", "1", ...) -> speed as a share of its maximum (NVIDIA's may exceed 1:
    # it is the intended speed against the rated maximum); empty on passively cooled cards
    fans: Mapping[str, float] = field(default_factory=dict)
    interconnect: Interconnect = field(default_factory=Interconnect)
    recovery: Recovery = field(default_factory=Recovery)


class ProcessSample(NamedTuple):
    """A process holding memory on a device. ``start_ticks`` tells a reused pid apart.

    A NamedTuple rather than a frozen dataclass: hundreds are built per poll, and it is
    three times cheaper to build."""

    device_uuid: str
    pid: int
    used_memory_bytes: int | None
    name: str | None = None
    start_ticks: int | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    # Share of the last interval the process kept the graphics/compute engine busy.
    busy_ratio: float | None = None
    # the Kubernetes pod's, from the kubelet's pod directory (probes/pods.py)
    pod_namespace: str | None = None
    pod_name: str | None = None


# How a probe run can end: ok, skipped (a gate said no), failed, timeout (killed at
# probes.timeout), discarded (a process appeared during the run).
PROBE_OUTCOMES = ("ok", "skipped", "failed", "timeout", "discarded")


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """What gpuprobe's active probes have measured on a device, and how their runs went.

    ``values`` are from the last successful run (a cached measurement, not a poll);
    ``runs`` counts runs by outcome (ok, skipped, failed, timeout, discarded) and ``skips``
    the skipped ones by reason."""

    device_uuid: str
    probe: str
    values: Mapping[str, float] = field(default_factory=dict)
    duration_seconds: float | None = None
    last_success: float | None = None
    runs: Mapping[str, int] = field(default_factory=dict)
    skips: Mapping[str, int] = field(default_factory=dict)
    gpu_seconds_total: float = 0.0


@dataclass(frozen=True, slots=True)
class LeakSample:
    """The leak detector's view of one memory series: a device's, or a process's on a device.

    Rates are bytes per second and times seconds, of the time the series was sampled in
    (scenario time under --simulate). ``exhaustion_seconds`` is None when not growing."""

    kind: str  # "device" or "process"
    device_uuid: str
    growth_bytes_per_second: float
    suspected: bool
    confidence: float
    growth_seconds: float
    exhaustion_seconds: float | None = None
    pid: int | None = None
    name: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """State of a vendor library as seen by the daemon."""

    name: str
    up: bool
    reason: str | None = None
    library_version: str | None = None
    driver_version: str | None = None
    binding_version: str | None = None  # the Python wrapper's own version (amdsmi)
    # True when the binding does not match the library; None when it cannot be told.
    version_mismatch: bool | None = None


@dataclass(frozen=True, slots=True)
class CollectorResult:
    """What one run of a collector produced.

    ``ok`` is False when the collector could not do its job (library down, discovery failed);
    ``errors`` counts the vendor-call errors of this run by class.
    """

    ok: bool = True
    devices: tuple[DeviceSample, ...] = ()
    processes: tuple[ProcessSample, ...] = ()
    # device uuid -> {xid code: count since the daemon started watching}
    xid_counts: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    # device uuid -> {event ("reset", "thermal_throttle"): count since the daemon started}
    event_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    backends: tuple[BackendStatus, ...] = ()
    # Readings of devices that another collector reports (the slow AMD calls): the view
    # fills what that collector's sample of the device lacks with them.
    supplements: tuple[DeviceSample, ...] = ()
    probes: tuple[ProbeSample, ...] = ()
    leaks: tuple[LeakSample, ...] = ()
    errors: Mapping[str, int] = field(default_factory=dict)
    # When the readings were taken (Unix seconds; scenario time under --simulate).
    timestamp: float | None = None


# PCIe raw rate per lane (GT/s) and encoding efficiency, by generation. Gen 6 uses FLIT mode:
# 242 of every 256 bytes carry TLP/DLLP data, the rest is CRC and FEC.
_PCIE_GENERATIONS = {1: (2.5, 0.8), 2: (5.0, 0.8), 3: (8.0, 128 / 130), 4: (16.0, 128 / 130),
                     5: (32.0, 128 / 130), 6: (64.0, 242 / 256)}


def pcie_link_bytes_per_second(generation: int | None, width: int | None) -> float | None:
    """Theoretical per-direction rate of a PCIe link after line encoding, before packet
    overhead (Gen5 x16: 63.0 GB/s). None when generation or width is unknown."""
    if not generation or not width or generation not in _PCIE_GENERATIONS:
        return None
    gts, efficiency = _PCIE_GENERATIONS[generation]
    return gts * 1e9 * efficiency * width / 8
