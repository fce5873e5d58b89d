"""Every metric gpuprobe exports, in one table: name, type, help, labels, unit, sources.

The exporter renders from this table and ``docs/metrics.md`` is generated from it
(``python -m gpuprobe.daemon.export.catalog --write docs/metrics.md``; a test fails when the file is
out of date). Per-device metrics carry the labels ``gpu``, ``uuid``, ``vendor`` (and
``parent_uuid`` on a MIG instance or AMD partition); the ``labels`` column lists the labels
a metric adds.
Each device metric has an extractor from a :class:`DeviceSample` to ``(label values, value)``
pairs; an absent value yields no series.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuprobe.daemon.core.model import (
    PROBE_OUTCOMES,
    DeviceIdentity,
    DeviceSample,
    LeakSample,
    Link,
    ProbeSample,
    ProcessSample,
)
from gpuprobe.daemon.core.probekinds import PROBE_KINDS, ProbeKind, ProbeMetric
from gpuprobe.daemon.core.state import View

Series = Iterable[tuple[tuple[str, ...], float]]
Labels = dict[str, str]
Samples = Iterable[tuple[Labels, float]]
DEVICE_LABELS = ("gpu", "uuid", "vendor")
# Outcomes exported at 0 before they happen: what the probe alert counts, and ok beside it.
# A skip is told by gpuprobe_probe_skips_total's reasons, a discarded run is rare: both
# appear with their first run, which saves two series per probe and GPU (docs/deploy.md).
ALWAYS_OUTCOMES = frozenset({"ok", "failed", "timeout"})
ERROR_CLASSES = ("unsupported", "transient", "device_fatal", "library_fatal", "timeout",
                 "internal")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed: counters end in _total, info metrics in _info
    type: str  # gauge, counter or info
    help: str
    unit: str
    # device, link (a device metric per link, on with exporter.link_metrics), process, xid,
    # event, leak, process_leak, probe, collector, backend, build, http
    scope: str
    nvidia: str
    amd: str = ""
    labels: tuple[str, ...] = ()
    # A device metric's series from one DeviceSample: (values of `labels`, value) pairs ...
    values: Callable[[DeviceSample], Series] | None = None
    # ... any other metric's from the whole scrape: (labels, value) pairs.
    samples: Callable[[Scrape], Samples] | None = None

    def series(self, scrape: Scrape) -> Samples:
        """Every sample of this metric in the scrape; an absent value yields none."""
        if self.samples is not None:
            return self.samples(scrape)
        if self.values is None:
            return ()
        return _per_device(self.values, self.labels, scrape)

    @property
    def family(self) -> str:
        """The name without the suffix prometheus_client adds for the type."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name


def one(get: Callable[[DeviceSample], float | int | bool | None]
        ) -> Callable[[DeviceSample], Series]:
    def series(d: DeviceSample) -> Series:
        v = get(d)
        return () if v is None else (((), float(v)),)
    return series


def keyed(get: Callable[[DeviceSample], Mapping[Any, float]]
          ) -> Callable[[DeviceSample], Series]:
    def series(d: DeviceSample) -> Series:
        return [((k,) if isinstance(k, str) else tuple(k), float(v))
                for k, v in sorted(get(d).items())]
    return series


def _links(get: Callable[[Link], float | int | bool | None]
           ) -> Callable[[DeviceSample], Series]:
    """One series per link of the device, labelled ``link``; a link without the value has
    none."""
    def series(d: DeviceSample) -> Series:
        out = []
        for name, link in sorted(d.interconnect.links.items(), key=lambda kv: _order(kv[0])):
            v = get(link)
            if v is not None:
                out.append(((name,), float(v)))
        return out
    return series


def _link_errors(d: DeviceSample) -> Series:
    return [((name, kind), float(n))
            for name, link in sorted(d.interconnect.links.items(), key=lambda kv: _order(kv[0]))
            for kind, n in sorted(link.errors.items())]


def _order(index: str) -> tuple[int, str]:
    return (int(index) if index.isdigit() else 1 << 30, index)


def _links_count(d: DeviceSample) -> Series:
    ic = d.interconnect
    return [((ic.kind,), float(len(ic.links)))] if ic.kind and ic.links else []


def _links_up(d: DeviceSample) -> Series:
    known = [link.up for link in d.interconnect.links.values() if link.up is not None]
    return [((), float(sum(known)))] if known else []


def _recovery_action(d: DeviceSample) -> Series:
    a = d.recovery.action
    return [((a,), 1.0)] if a is not None else []


def _throttle_active(d: DeviceSample) -> Series:
    t = d.throttle
    return [((r,), 1.0 if r in t.active else 0.0) for r in sorted(t.supported)]


# -- the scrape and the extractors of the metrics that are not one device's readings -------

def device_labels(identity: DeviceIdentity) -> Labels:
    labels = dict(zip(DEVICE_LABELS, (identity.index, identity.uuid, identity.vendor),
                      strict=True))
    if identity.parent_uuid:
        labels["parent_uuid"] = identity.parent_uuid
    return labels


def _present(labels: dict[str, str | None]) -> Labels:
    """``labels`` without those that have no value: absent, never exported empty."""
    return {k: str(v) for k, v in labels.items() if v is not None and v != ""}


# A process's own labels, after its device's; namespace and pod are the Kubernetes pod's,
# as dcgm-exporter and kube-state-metrics name them, so joins need no label_replace.
_PROCESS_LABELS = ("pid", "process_name", "container_id", "pod_uid", "namespace", "pod")


def process_labels(base: Labels, p: ProcessSample | LeakSample) -> Labels:
    """A process's series labels: the device's, then pid, name, container and pod."""
    return {**base, "pid": str(p.pid), **_present(
        {"process_name": p.name, "container_id": p.container_id, "pod_uid": p.pod_uid,
         "namespace": p.pod_namespace, "pod": p.pod_name})}


class Scrape:
    """What one scrape renders from: the published view and the exporter's settings, with
    what several metrics share worked out once (each device's labels, the processes that get
    series of their own, the leak assessments that are shown)."""

    def __init__(self, view: View, process_metrics: bool, max_processes: int,
                 build: Labels) -> None:
        self.view = view
        self.build = build
        self.devices = view.devices()
        self.ids = {d.identity.uuid: device_labels(d.identity) for d in self.devices}
        by_device: dict[str, list] = {}
        for p in view.processes():
            by_device.setdefault(p.device_uuid, []).append(p)
        # device uuid -> every process on it; (labels, process) of those with series
        self.processes = {u: ps for u, ps in by_device.items() if u in self.ids}
        self.shown: list[tuple[Labels, Any]] = []
        shown_labels: dict[tuple[str, int], Labels] = {}
        for uuid, procs in self.processes.items() if process_metrics else ():
            ranked = sorted(procs, key=lambda p: (-(p.used_memory_bytes or 0), p.pid))
            for p in ranked[:max_processes]:
                if p.used_memory_bytes is None:
                    continue
                labels = process_labels(self.ids[uuid], p)
                shown_labels[(uuid, p.pid)] = labels
                self.shown.append((labels, p))
        # (labels, leak) of every assessment exported: a device's always; a process's when
        # it has series of its own, or when it is suspected (beyond the cap too).
        self.device_leaks: list[tuple[Labels, LeakSample]] = []
        self.process_leaks: list[tuple[Labels, LeakSample]] = []
        for leak in view.leaks():
            base = self.ids.get(leak.device_uuid)
            if base is None:
                continue
            if leak.kind == "device":
                self.device_leaks.append((base, leak))
            elif process_metrics and leak.pid is not None:
                found = shown_labels.get((leak.device_uuid, leak.pid))
                if found is None and leak.suspected:
                    found = process_labels(base, leak)
                if found is not None:
                    self.process_leaks.append((found, leak))
        self.probes = [(self.ids[ps.device_uuid], ps) for ps in view.probes()
                       if ps.device_uuid in self.ids]


def _per_device(values: Callable[[DeviceSample], Series], names: tuple[str, ...],
                scrape: Scrape) -> Samples:
    for d in scrape.devices:
        base = scrape.ids[d.identity.uuid]
        for extra, value in values(d):
            if not extra:
                yield base, value
            else:
                yield {**base, **dict(zip(names, extra, strict=True))}, value


def _device_info(s: Scrape) -> Samples:
    for d in s.devices:
        i = d.identity
        yield {**s.ids[i.uuid], **_present({
            "model": i.model, "pci_bus_id": i.pci_bus_id, "serial": i.serial,
            "driver_version": i.driver_version, "firmware_version": i.firmware_version,
            "architecture": i.architecture, "compute_capability": i.compute_capability,
            "parent_uuid": i.parent_uuid, "partition": i.partition,
            "memory_partition": i.memory_partition})}, 1


def _counts(pairs: Callable[[View], list[tuple[str, Mapping[Any, int]]]], label: str
            ) -> Callable[[Scrape], Samples]:
    """Per-device counters by one key (xid code, event), sorted by key."""
    def samples(s: Scrape) -> Samples:
        for uuid, counts in pairs(s.view):
            if uuid in s.ids:
                for key, count in sorted(counts.items()):
                    yield {**s.ids[uuid], label: str(key)}, count
    return samples


def _device_processes(s: Scrape) -> Samples:
    for uuid, procs in s.processes.items():
        yield s.ids[uuid], len(procs)


def _process(get: Callable[[Any], float | None]) -> Callable[[Scrape], Samples]:
    def samples(s: Scrape) -> Samples:
        for labels, p in s.shown:
            value = get(p)
            if value is not None:
                yield labels, value
    return samples


def _leak(kind: str, get: Callable[[LeakSample], float | None],
          when: Callable[[str, LeakSample], bool] = lambda kind, leak: True
          ) -> Callable[[Scrape], Samples]:
    """One figure of the leak detector's assessments of a kind (device or process)."""
    def samples(s: Scrape) -> Samples:
        for labels, leak in (s.device_leaks if kind == "device" else s.process_leaks):
            value = get(leak)
            if value is not None and when(kind, leak):
                yield labels, value
    return samples


def _growing(kind: str, leak: LeakSample) -> bool:
    # A process's growth figures only while growth is seen: hosts run hundreds of GPU
    # processes, and a flat one's rate says nothing its memory series does not.
    return leak.growth_seconds > 0 or leak.suspected


def _rate_shown(kind: str, leak: LeakSample) -> bool:
    return kind == "device" or _growing(kind, leak)


def _probe(get: Callable[[Labels, ProbeSample], Samples]) -> Callable[[Scrape], Samples]:
    def samples(s: Scrape) -> Samples:
        for base, ps in s.probes:
            yield from get(base, ps)
    return samples


def _probe_values(kind: ProbeKind, metric: ProbeMetric
                  ) -> Callable[[Labels, ProbeSample], Samples]:
    def get(base: Labels, ps: ProbeSample) -> Samples:
        if ps.probe == kind.name:
            for extra, value in metric.series(ps.values):
                yield {**base, **extra}, value
    return get


def _probe_metric(kind: ProbeKind, metric: ProbeMetric) -> MetricSpec:
    """The catalogue entry of one metric of a probe kind's values."""
    return MetricSpec(metric.name, "gauge", metric.help, metric.unit, "probe", metric.nvidia,
                      metric.amd, labels=metric.labels,
                      samples=_probe(_probe_values(kind, metric)))


def _probe_field(get: Callable[[ProbeSample], Iterable[tuple[Labels, float | None]]]
                 ) -> Callable[[Labels, ProbeSample], Samples]:
    def samples(base: Labels, ps: ProbeSample) -> Samples:
        for extra, value in get(ps):
            if value is not None:
                yield {**base, "probe": ps.probe, **extra}, value
    return samples


def _collector(get: Callable[[Any], Iterable[tuple[Labels, float | None]]]
               ) -> Callable[[Scrape], Samples]:
    def samples(s: Scrape) -> Samples:
        for name, h in sorted(s.view.health.items()):
            for extra, value in get(h):
                if value is not None:
                    yield {"collector": name, **extra}, value
    return samples


def _backend(get: Callable[[Any], Iterable[tuple[Labels, float | None]]]
             ) -> Callable[[Scrape], Samples]:
    def samples(s: Scrape) -> Samples:
        for name, b in sorted(s.view.backends().items()):
            for extra, value in get(b):
                if value is not None:
                    yield {"backend": name, **extra}, value
    return samples


def _backend_info(b: Any) -> Iterable[tuple[Labels, float | None]]:
    return (({**_present({"library_version": b.library_version,
                          "driver_version": b.driver_version,
                          "binding_version": b.binding_version})}, 1),)


M = MetricSpec
CATALOG: tuple[MetricSpec, ...] = (
    # -- identity and health ---------------------------------------------------------------
    M("gpuprobe_device_info", "info",
      "Identity of a GPU (or NVIDIA MIG instance / AMD partition); always 1. Join on uuid "
      "for labels.",
      "", "device", "nvmlDeviceGetName, GetPciInfo, GetSerial, GetVbiosVersion, "
      "GetArchitecture, GetCudaComputeCapability; MIG: GetMigDeviceHandleByIndex",
      labels=("model", "pci_bus_id", "serial", "driver_version", "firmware_version",
              "architecture", "compute_capability", "parent_uuid", "partition",
              "memory_partition"),
      amd=(
      'amdsmi_get_gpu_asic_info (market_name, target_graphics_version), '
      'get_gpu_device_bdf, get_gpu_board_info / asic_serial, get_gpu_driver_info, '
      'get_gpu_vbios_info, get_gpu_compute_partition, get_gpu_memory_partition; a '
      'partition per handle, its number in the PCI function'),
      samples=_device_info),
    M("gpuprobe_device_up", "gauge",
      "1 when the device answered the last poll, 0 when it is lost, hung or its library is "
      "down. A device once seen stays listed.", "", "device", "any device-fatal NVML error "
      "(GPU_IS_LOST, RESET_REQUIRED, ...), a missed deadline, or the library down",
      values=one(lambda d: d.up),
      amd=(
      'amdsmi status NOT_FOUND (device gone), a missed deadline, or the library down')),
    # -- memory ----------------------------------------------------------------------------
    M("gpuprobe_memory_total_bytes", "gauge", "Total device memory in bytes.", "bytes",
      "device", "nvmlDeviceGetMemoryInfo (v2) .total", values=one(lambda d: d.memory.total_bytes),
      amd=(
      'amdsmi_get_gpu_memory_total(VRAM) (bytes), per partition as its handle reports it; '
      "the GPU (gpu=\"0\"): its pool once, never summed when its partitions all show the "
      "same figures in NPS1 (each may be the whole pool: docs/hardware/amd.md), else the "
      "sum of its partitions'")),
    M("gpuprobe_memory_used_bytes", "gauge",
      "Device memory allocated by processes and the driver in bytes, excluding memory "
      "reserved by the driver and firmware.", "bytes", "device",
      "nvmlDeviceGetMemoryInfo (v2) .used", values=one(lambda d: d.memory.used_bytes),
      amd=(
      "amdsmi_get_gpu_memory_usage(VRAM) (bytes; includes the driver's own "
      "allocations), per partition as its handle reports it; the GPU: as for "
      "gpuprobe_memory_total_bytes, the pool once or the partitions' sum")),
    M("gpuprobe_memory_free_bytes", "gauge", "Device memory free for allocation in bytes.",
      "bytes", "device", "nvmlDeviceGetMemoryInfo (v2) .free",
      values=one(lambda d: d.memory.free_bytes),
      amd=(
      'total minus used (amdsmi has no free figure)')),
    M("gpuprobe_memory_reserved_bytes", "gauge",
      "Device memory reserved by the driver and firmware in bytes.", "bytes", "device",
      "nvmlDeviceGetMemoryInfo (v2) .reserved", values=one(lambda d: d.memory.reserved_bytes),
      amd=(
      "absent: amdsmi does not report the driver's reserve apart")),
    M("gpuprobe_bar1_memory_total_bytes", "gauge",
      "Size of the BAR1 aperture (device memory mapped for the host and peers) in bytes.",
      "bytes", "device", "nvmlDeviceGetBAR1MemoryInfo .bar1Total",
      values=one(lambda d: d.memory.bar1_total_bytes),
      amd=(
      'amdsmi_get_gpu_memory_total(VIS_VRAM): the CPU-visible VRAM, i.e. the PCI BAR')),
    M("gpuprobe_bar1_memory_used_bytes", "gauge", "BAR1 aperture in use in bytes.", "bytes",
      "device", "nvmlDeviceGetBAR1MemoryInfo .bar1Used",
      values=one(lambda d: d.memory.bar1_used_bytes),
      amd=(
      'amdsmi_get_gpu_memory_usage(VIS_VRAM)')),
    M("gpuprobe_gtt_memory_total_bytes", "gauge",
      "Host memory the device may map through its GART (GTT), in bytes; where an APU's "
      "memory mostly lives.", "bytes", "device", "absent: NVIDIA has no GTT",
      values=one(lambda d: d.memory.gtt_total_bytes),
      amd="amdsmi_get_gpu_memory_total(GTT) (bytes)"),
    M("gpuprobe_gtt_memory_used_bytes", "gauge", "GTT host memory in use, in bytes.", "bytes",
      "device", "absent: NVIDIA has no GTT", values=one(lambda d: d.memory.gtt_used_bytes),
      amd="amdsmi_get_gpu_memory_usage(GTT) (bytes)"),
    # -- thermal ---------------------------------------------------------------------------
    M("gpuprobe_temperature_celsius", "gauge", "Temperature of a device sensor in celsius.",
      "celsius", "device", "sensor=gpu: nvmlDeviceGetTemperatureV (GetTemperature on older "
      "drivers); sensor=memory: field NVML_FI_DEV_MEMORY_TEMP (82)", labels=("sensor",),
      values=keyed(lambda d: d.thermal.temperatures),
      amd=(
      'amdsmi_get_temp_metric(CURRENT): sensor=edge (EDGE; none on MI300), hotspot '
      '(HOTSPOT, the junction), memory (VRAM)')),
    M("gpuprobe_temperature_threshold_celsius", "gauge",
      "Temperature at which the device acts: slowdown (clocks cut), shutdown, max_operating "
      "(software slowdown starts).", "celsius", "device",
      "nvmlDeviceGetTemperatureThreshold: SHUTDOWN, SLOWDOWN, GPU_MAX (sensor=gpu), MEM_MAX "
      "(sensor=memory)", labels=("sensor", "threshold"),
      values=keyed(lambda d: d.thermal.thresholds),
      amd=(
      'amdsmi_get_temp_metric: CRITICAL as slowdown, EMERGENCY as shutdown, per sensor '
      '(edge, hotspot, memory); no max_operating')),
    # -- power -----------------------------------------------------------------------------
    M("gpuprobe_power_draw_watts", "gauge", "Power drawn by the device in watts.", "watts",
      "device", "nvmlDeviceGetPowerUsage (mW; a 1 s average on Ampere and newer, except GA100)",
      values=one(lambda d: d.power.draw_watts),
      amd=(
      'amdsmi_get_power_info current_socket_power (MI300), else average_socket_power '
      '(W)')),
    M("gpuprobe_power_limit_watts", "gauge", "Power limit the device enforces in watts.",
      "watts", "device", "nvmlDeviceGetEnforcedPowerLimit (mW)",
      values=one(lambda d: d.power.limit_watts),
      amd=(
      'amdsmi_get_power_cap_info power_cap (µW)')),
    M("gpuprobe_power_limit_min_watts", "gauge",
      "Lowest power limit the device can be set to, in watts.", "watts", "device",
      "nvmlDeviceGetPowerManagementLimitConstraints minLimit (mW)",
      values=one(lambda d: d.power.limit_min_watts),
      amd="amdsmi_get_power_cap_info min_power_cap (µW)"),
    M("gpuprobe_power_limit_max_watts", "gauge",
      "Highest power limit the device can be set to, in watts.", "watts", "device",
      "nvmlDeviceGetPowerManagementLimitConstraints maxLimit (mW)",
      values=one(lambda d: d.power.limit_max_watts),
      amd="amdsmi_get_power_cap_info max_power_cap (µW)"),
    M("gpuprobe_power_limit_default_watts", "gauge",
      "Power limit the device has out of the box, in watts: a current limit below it was "
      "lowered by someone.", "watts", "device",
      "nvmlDeviceGetPowerManagementDefaultLimit (mW)",
      values=one(lambda d: d.power.limit_default_watts),
      amd="amdsmi_get_power_cap_info default_power_cap (µW)"),
    # -- cooling ---------------------------------------------------------------------------
    M("gpuprobe_fan_speed_ratio", "gauge",
      "Speed of each fan as a share of its maximum. Absent on passively cooled cards (most "
      "data-centre GPUs). NVIDIA reports the intended speed, which may exceed 1.", "ratio",
      "device", "nvmlDeviceGetNumFans, nvmlDeviceGetFanSpeed_v2 (% of the rated maximum)",
      labels=("fan",), values=keyed(lambda d: d.fans),
      amd="amdsmi_get_gpu_fan_speed over amdsmi_get_gpu_fan_speed_max (both 0-255), per "
      "sensor index from 0 until one is unsupported (at most 4); absent on Instinct "
      "(NOT_SUPPORTED)"),
    M("gpuprobe_energy_joules_total", "counter",
      "Energy consumed by the device since the driver loaded, in joules.", "joules", "device",
      "field NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION (83, mJ)",
      values=one(lambda d: d.power.energy_joules),
      amd=(
      'amdsmi_get_energy_count: energy_accumulator × counter_resolution (µJ per tick, '
      'about 15.3)')),
    # -- clocks ----------------------------------------------------------------------------
    M("gpuprobe_clock_hertz", "gauge", "Current clock frequency of a clock domain in hertz.",
      "hertz", "device", "nvmlDeviceGetClockInfo: GRAPHICS, SM, MEM, VIDEO (MHz)",
      labels=("clock",), values=keyed(lambda d: d.clocks.current),
      amd=(
      'amdsmi_get_clock_info clk: GFX as graphics, MEM as memory, SOC as soc, VCLK0 as '
      'video (MHz)')),
    M("gpuprobe_clock_max_hertz", "gauge", "Maximum clock frequency of a clock domain in hertz.",
      "hertz", "device", "nvmlDeviceGetMaxClockInfo (MHz)", labels=("clock",),
      values=keyed(lambda d: d.clocks.maximum),
      amd=(
      'amdsmi_get_clock_info max_clk (MHz)')),
    # -- throttling ------------------------------------------------------------------------
    M("gpuprobe_throttle_active", "gauge",
      "1 while a reason holds the clocks down, 0 otherwise; one series per reason the device "
      "reports (gpu_idle, applications_clocks, power_cap, hw_slowdown, sync_boost, sw_thermal, "
      "hw_thermal, hw_power_brake, display_clocks; AMD adds current_limit and "
      "memory_thermal).", "", "device",
      "nvmlDeviceGetCurrentClocksEventReasons bits, limited to "
      "nvmlDeviceGetSupportedClocksEventReasons", labels=("reason",), values=_throttle_active,
      amd=(
      "gpu_metrics indep_throttle_status read raw through the binding's ctypes layer "
      '(its dict gives a bool), SMU_THROTTLER bits mapped to power_cap, current_limit, '
      'sw_thermal, memory_thermal, hw_slowdown; without it, residency accumulators that '
      'grew since the last poll, or amdsmi_get_violation_status active_* (slow path)')),
    M("gpuprobe_throttle_seconds_total", "counter",
      "Time the clocks were held down for a reason, in seconds since the driver loaded. "
      "Counts events too short for a poll to see. AMD MI300 adds host_limit_power, "
      "host_limit_thermal and host_limit (the gfx clock below the host's limit for power, "
      "for thermal, for any reason; only here, not in gpuprobe_throttle_active).", "seconds",
      "device",
      "fields NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP (74), SYNC_BOOST (76), "
      "SW_THERM_SLOWDOWN (269), HW_THERM_SLOWDOWN (270), HW_POWER_BRAKE_SLOWDOWN (271) (ns)",
      labels=("reason",), values=keyed(lambda d: d.throttle.seconds_total),
      amd=(
      'gpu_metrics ppt_ (power_cap), socket_thm_ (sw_thermal), hbm_thm_ '
      '(memory_thermal), prochot_residency_acc (hw_slowdown) over accumulation_counter, '
      'times the time between polls; xcp_stats.gfx_below_host_limit_ppt_acc '
      '(host_limit_power), _thm_acc (host_limit_thermal), _total_acc (host_limit; else the '
      'older gfx_below_host_limit_acc) the same way, the mean over the XCCs (gpu_metrics '
      'v1.8); MI300; counted from when gpuprobe first saw the device')),
    M("gpuprobe_performance_state", "gauge",
      "Performance state: 0 is maximum performance, 15 minimum.", "", "device",
      "nvmlDeviceGetPerformanceState (P0-P15)", values=one(lambda d: d.performance_state),
      amd=(
      'absent: AMD has no P-states of this kind')),
    # -- PCIe ------------------------------------------------------------------------------
    M("gpuprobe_pcie_link_generation", "gauge",
      "PCIe generation the link is trained at now. Idle GPUs may train down to save power.",
      "", "device", "nvmlDeviceGetCurrPcieLinkGeneration",
      values=one(lambda d: d.pcie.generation),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_speed (MT/s; 32000 is Gen5), else '
      'gpu_metrics pcie_link_speed (0.1 GT/s)')),
    M("gpuprobe_pcie_link_width", "gauge", "PCIe lanes the link is trained at now.", "",
      "device", "nvmlDeviceGetCurrPcieLinkWidth", values=one(lambda d: d.pcie.width),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_width, else gpu_metrics pcie_link_width')),
    M("gpuprobe_pcie_link_max_generation", "gauge",
      "Highest PCIe generation both the device and its slot support.", "", "device",
      "nvmlDeviceGetMaxPcieLinkGeneration", values=one(lambda d: d.pcie.max_generation),
      amd=(
      'amdsmi_get_pcie_info pcie_static.max_pcie_speed (MT/s)')),
    M("gpuprobe_pcie_link_max_width", "gauge", "Most PCIe lanes the device supports.", "",
      "device", "nvmlDeviceGetMaxPcieLinkWidth", values=one(lambda d: d.pcie.max_width),
      amd=(
      'amdsmi_get_pcie_info pcie_static.max_pcie_width')),
    M("gpuprobe_pcie_transmit_bytes_total", "counter",
      "Bytes the device sent over PCIe (device to host and peers), headers included, since "
      "gpuprobe started watching it.",
      "bytes", "device", "GPM PCIE_TX_PER_SEC (20) integrated over each poll interval on "
      "Hopper+; else field NVML_FI_DEV_PCIE_COUNT_TX_BYTES (197), a 32-bit counter whose "
      "wraps are followed (more than 4 GiB between polls is undercounted)",
      values=one(lambda d: d.pcie.tx_bytes_total),
      amd=(
      'absent: amdsmi has no byte counter; see '
      'gpuprobe_pcie_sampled_throughput_bytes_per_second')),
    M("gpuprobe_pcie_receive_bytes_total", "counter",
      "Bytes the device received over PCIe (host and peers to device), headers included, "
      "since gpuprobe started watching it.",
      "bytes", "device", "GPM PCIE_RX_PER_SEC (21) integrated over each poll interval on "
      "Hopper+; else field NVML_FI_DEV_PCIE_COUNT_RX_BYTES (198), a 32-bit counter whose "
      "wraps are followed (more than 4 GiB between polls is undercounted)",
      values=one(lambda d: d.pcie.rx_bytes_total),
      amd=(
      'absent: amdsmi has no byte counter; see '
      'gpuprobe_pcie_sampled_throughput_bytes_per_second')),
    M("gpuprobe_pcie_sampled_throughput_bytes_per_second", "gauge",
      "PCIe traffic per direction (tx: device to host, rx: host to device) measured over a "
      "one-second window by the driver, refreshed by the slow collector (amd_slow); a "
      "sample, not an average since the last scrape.", "bytes", "device",
      "absent: NVIDIA has byte counters (gpuprobe_pcie_transmit_bytes_total)",
      labels=("direction",), values=keyed(lambda d: d.pcie.sampled_bytes_per_second),
      amd="amdsmi_get_gpu_pci_throughput sent, received (bytes in 1 s; blocks 1 s; "
      "Instinct; pcie_bw is absent or zero on RDNA and APUs); not asked where gpu_metrics "
      "has the pcie_bandwidth_acc byte counter (MI300)"),
    M("gpuprobe_pcie_transferred_bytes_total", "counter",
      "Bytes over the PCIe link both ways as the device counts them, since gpuprobe started "
      "watching it.", "bytes", "device",
      "absent: NVIDIA counts each direction (gpuprobe_pcie_transmit_bytes_total)",
      values=one(lambda d: d.pcie.transferred_bytes_total),
      amd="gpu_metrics pcie_bandwidth_acc (GB/s added each accumulation tick) over "
      "accumulation_counter, times the time between polls, x 1e9; MI300"),
    M("gpuprobe_pcie_replays_total", "counter",
      "PCIe packets the link layer had to send again (a link-health signal).", "", "device",
      "field NVML_FI_DEV_PCIE_REPLAY_COUNTER (94)", values=one(lambda d: d.pcie.replays_total),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_replay_count (MI300-era; N/A elsewhere)')),
    M("gpuprobe_pcie_link_recoveries_total", "counter",
      "Times the PCIe link left L0 for recovery.", "", "device",
      "field NVML_FI_DEV_PCIE_L0_TO_RECOVERY_COUNTER (169)",
      values=one(lambda d: d.pcie.recoveries_total),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_l0_to_recovery_count')),
    M("gpuprobe_pcie_naks_received_total", "counter", "PCIe NAKs the device received.", "",
      "device", "field NVML_FI_DEV_PCIE_COUNT_NAKS_RECEIVED (174)",
      values=one(lambda d: d.pcie.naks_received_total),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_nak_received_count')),
    M("gpuprobe_pcie_naks_sent_total", "counter", "PCIe NAKs the device sent.", "", "device",
      "field NVML_FI_DEV_PCIE_COUNT_NAKS_SENT (177)", values=one(lambda d: d.pcie.naks_sent_total),
      amd=(
      'amdsmi_get_pcie_info pcie_metric.pcie_nak_sent_count')),
    M("gpuprobe_pcie_replay_rollovers_total", "counter",
      "Times the PCIe replay counter rolled over (a replay storm).", "", "device",
      "field NVML_FI_DEV_PCIE_REPLAY_ROLLOVER_COUNTER (95)",
      values=one(lambda d: d.pcie.replay_rollovers_total),
      amd="absent: amdsmi has no rollover counter"),
    M("gpuprobe_pcie_errors_total", "counter",
      "PCIe errors the device counted, by kind (correctable, receiver_error, bad_tlp, "
      "bad_dllp, non_fatal, fatal, unsupported_request, lcrc, lane).", "", "device",
      "fields NVML_FI_DEV_PCIE_COUNT_CORRECTABLE_ERRORS (173), RECEIVER_ERROR (175), "
      "BAD_TLP (176), BAD_DLLP (178), NON_FATAL_ERROR (179), FATAL_ERROR (180), "
      "UNSUPPORTED_REQ (181), LCRC_ERROR (182), LANE_ERROR (183)",
      labels=("kind",), values=keyed(lambda d: d.pcie.errors),
      amd="absent: amdsmi exposes no PCIe AER counts"),
    M("gpuprobe_utilization_ratio", "gauge",
      "Share of the driver's last sample period an engine was busy (gpu: any kernel running, "
      "not SM occupancy; memory: device memory being read or written).", "ratio", "device",
      "nvmlDeviceGetUtilizationRates .gpu, .memory; GetEncoderUtilization, "
      "GetDecoderUtilization (%); not on MIG", labels=("engine",),
      values=keyed(lambda d: d.utilization),
      amd=(
      "gpu: the mean of the XCCs' busy (gpu_metrics xcp_stats.gfx_busy_inst) on MI300, "
      'else amdsmi_get_gpu_activity gfx_activity; memory: umc_activity; multimedia: '
      'mm_activity (%); a partition: its own XCCs')),
    M("gpuprobe_xcc_utilization_ratio", "gauge",
      "Busy share of each accelerator complex die (XCC) of an MI300-class GPU or partition.",
      "ratio", "device", "absent: NVIDIA GPUs have no XCCs", labels=("xcc",),
      values=keyed(lambda d: d.xcc_utilization),
      amd="gpu_metrics xcp_stats.gfx_busy_inst[partition][xcc] (%)"),
    M("gpuprobe_graphics_engine_active_ratio", "gauge",
      "Share of the last poll interval the graphics or compute engine was active.", "ratio",
      "device", "GPM NVML_GPM_METRIC_GRAPHICS_UTIL (1), Hopper and newer",
      values=one(lambda d: d.activity.graphics_engine),
      amd=(
      'absent: no profiling-class counters in amdsmi (see gpuprobe_utilization_ratio)')),
    M("gpuprobe_sm_active_ratio", "gauge",
      "Share of SM cycles with at least one warp resident, averaged over the SMs, over the "
      "last poll interval.", "ratio", "device", "GPM NVML_GPM_METRIC_SM_UTIL (2), Hopper and newer",
      values=one(lambda d: d.activity.sm_active),
      amd=(
      "absent: amdsmi has no SM (CU) activity; AMD's exporter needs rocprofiler for it")),
    M("gpuprobe_sm_occupancy_ratio", "gauge",
      "Resident warps as a share of the SMs' maximum, over the last poll interval.", "ratio",
      "device", "GPM NVML_GPM_METRIC_SM_OCCUPANCY (3), Hopper and newer",
      values=one(lambda d: d.activity.sm_occupancy),
      amd=(
      'absent: amdsmi has no occupancy counter')),
    M("gpuprobe_tensor_active_ratio", "gauge",
      "Share of the last poll interval the tensor pipes were active.", "ratio", "device",
      "GPM NVML_GPM_METRIC_ANY_TENSOR_UTIL (5), Hopper and newer",
      values=one(lambda d: d.activity.tensor_active),
      amd=(
      'absent: no matrix-core counter in amdsmi')),
    M("gpuprobe_dram_active_ratio", "gauge",
      "Device memory bandwidth used as a share of its peak, over the last poll interval.",
      "ratio", "device", "GPM NVML_GPM_METRIC_DRAM_BW_UTIL (10), Hopper and newer",
      values=one(lambda d: d.activity.dram_active),
      amd=(
      'absent (umc_activity is exported as utilization_ratio{engine="memory"})')),
    # -- hardware errors -------------------------------------------------------------------
    M("gpuprobe_ecc_enabled", "gauge", "1 when ECC is on for device memory.", "", "device",
      "field NVML_FI_DEV_ECC_CURRENT (1)", values=one(lambda d: d.errors.ecc_enabled),
      amd=(
      'amdsmi_get_gpu_ecc_enabled (a block bitmask; non-zero is on)')),
    M("gpuprobe_ecc_corrected_errors_total", "counter",
      "Corrected (single-bit) ECC errors since the driver loaded.", "", "device",
      "field NVML_FI_DEV_ECC_SBE_VOL_TOTAL (3)",
      values=one(lambda d: d.errors.ecc_corrected_total),
      amd=(
      'amdsmi_get_gpu_total_ecc_count correctable_count')),
    M("gpuprobe_ecc_uncorrected_errors_total", "counter",
      "Uncorrected (double-bit) ECC errors since the driver loaded.", "", "device",
      "field NVML_FI_DEV_ECC_DBE_VOL_TOTAL (4)",
      values=one(lambda d: d.errors.ecc_uncorrected_total),
      amd=(
      'amdsmi_get_gpu_total_ecc_count uncorrectable_count')),
    M("gpuprobe_ecc_deferred_errors_total", "counter",
      "ECC errors the hardware deferred (poisoned data not yet consumed) since the driver "
      "loaded.", "", "device", "absent: NVIDIA has no deferred class",
      values=one(lambda d: d.errors.ecc_deferred_total),
      amd="amdsmi_get_gpu_total_ecc_count deferred_count"),
    M("gpuprobe_ecc_block_errors_total", "counter",
      "ECC and RAS errors by hardware block (umc, gfx, sdma, xgmi_wafl, ...) and severity "
      "(corrected, uncorrected, deferred) since the driver loaded.", "", "device",
      "absent: NVML's per-location counts are not collected", labels=("block", "severity"),
      values=keyed(lambda d: d.errors.ecc_blocks),
      amd="amdsmi_get_gpu_ecc_count(block) for each block in amdsmi_get_gpu_ecc_enabled"),
    M("gpuprobe_ecc_lifetime_corrected_errors_total", "counter",
      "Corrected ECC errors over the device's life (kept in its infoROM).", "", "device",
      "field NVML_FI_DEV_ECC_SBE_AGG_TOTAL (5)",
      values=one(lambda d: d.errors.ecc_corrected_lifetime_total),
      amd=(
      "absent: amdsmi's counts are since the driver loaded")),
    M("gpuprobe_ecc_lifetime_uncorrected_errors_total", "counter",
      "Uncorrected ECC errors over the device's life (kept in its infoROM).", "", "device",
      "field NVML_FI_DEV_ECC_DBE_AGG_TOTAL (6)",
      values=one(lambda d: d.errors.ecc_uncorrected_lifetime_total),
      amd=(
      "absent: amdsmi's counts are since the driver loaded")),
    M("gpuprobe_remapped_rows_total", "counter",
      "Memory rows remapped to spares, by the kind of error that caused it.", "", "device",
      "fields NVML_FI_DEV_REMAPPED_COR (142), REMAPPED_UNC (143); Ampere and newer",
      labels=("cause",), values=keyed(lambda d: d.errors.remapped_rows),
      amd=(
      'absent: AMD retires pages instead (gpuprobe_retired_pages_total)')),
    M("gpuprobe_row_remap_pending", "gauge",
      "1 when a row remap waits for a GPU reset to take effect.", "", "device",
      "field NVML_FI_DEV_REMAPPED_PENDING (144)", values=one(lambda d: d.errors.remap_pending),
      amd=(
      'absent (see gpuprobe_retired_pages_pending)')),
    M("gpuprobe_row_remap_failed", "gauge",
      "1 when a row could not be remapped (no spare rows left).", "", "device",
      "field NVML_FI_DEV_REMAPPED_FAILURE (145)", values=one(lambda d: d.errors.remap_failed),
      amd=(
      'absent')),
    M("gpuprobe_retired_pages_total", "counter",
      "Memory pages retired, by cause (pre-Ampere GPUs; newer ones remap rows).", "", "device",
      "fields NVML_FI_DEV_RETIRED_SBE (29), RETIRED_DBE (30)", labels=("cause",),
      values=keyed(lambda d: d.errors.retired_pages),
      amd=(
      'amdsmi_get_gpu_bad_page_info entries with status RESERVED, as '
      'cause=uncorrectable')),
    M("gpuprobe_retired_pages_pending", "gauge",
      "1 when pages wait for a reboot to be retired.", "", "device",
      "field NVML_FI_DEV_RETIRED_PENDING (31)",
      values=one(lambda d: d.errors.retired_pages_pending),
      amd=(
      'amdsmi_get_gpu_bad_page_info: any entry with status PENDING')),
    M("gpuprobe_xid_errors_total", "counter",
      "XID errors the driver reported, by code, since gpuprobe started watching. Critical "
      "codes (config nvidia.xid_codes) start at 0.", "", "xid",
      "NVML event set, nvmlEventTypeXidCriticalError, on its own thread", labels=("xid",),
      amd=(
      "absent: XIDs are NVIDIA's; see gpuprobe_device_events_total"),
      samples=_counts(View.xid_counts, "xid")),
    M("gpuprobe_device_events_total", "counter",
      "Device events the driver reported, by kind (reset, thermal_throttle, unavailable, "
      "recovery_action), since gpuprobe started watching; each kind the device supports "
      "starts at 0.", "", "event",
      "NVML event set, on its own thread beside XIDs: nvmlEventTypeGpuUnavailableError as "
      "unavailable, nvmlEventTypeGpuRecoveryAction as recovery_action, where "
      "nvmlDeviceGetSupportedEventTypes has them (the H100: 0xFF9F)", labels=("event",),
      amd="AmdSmiEventReader (KFD SMI events) GPU_PRE_RESET as reset, THERMAL_THROTTLE, on "
      "its own thread",
      samples=_counts(View.event_counts, "event")),
    # -- reset and recovery ----------------------------------------------------------------
    M("gpuprobe_reset_required", "gauge",
      "1 when the GPU must be reset before it is usable again.", "", "device",
      "field NVML_FI_DEV_RESET_STATUS (226)", values=one(lambda d: d.recovery.reset_required),
      amd="absent: see gpuprobe_device_events_total{event=\"reset\"}"),
    M("gpuprobe_drain_recommended", "gauge",
      "1 when the driver recommends draining the GPU's work and then resetting it.", "",
      "device", "field NVML_FI_DEV_DRAIN_AND_RESET_STATUS (227)",
      values=one(lambda d: d.recovery.drain_recommended),
      amd="absent"),
    M("gpuprobe_recovery_action", "gauge",
      "What the driver says must be done to the GPU: one series, value 1, whose action label "
      "is none, gpu_reset, node_reboot, drain_p2p, drain_and_reset, recover_imex_domain, "
      "bus_reset or system_reboot.", "", "device",
      "field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (230, nvmlGpuRecoveryAction_t)",
      labels=("action",), values=_recovery_action, amd="absent"),
    # -- GPU-to-GPU links (NVLink, XGMI) --------------------------------------------------
    M("gpuprobe_interconnect_links", "gauge",
      "GPU-to-GPU links the device has, by type (nvlink, xgmi), connected or not.", "",
      "device", "field NVML_FI_DEV_NVLINK_LINK_COUNT (91); the links whose state field answers",
      labels=("type",), values=_links_count,
      amd="amdsmi_get_gpu_xgmi_link_status: its links, up (U), down (D) or disabled (X)"),
    M("gpuprobe_interconnect_links_up", "gauge",
      "GPU-to-GPU links that are up.", "", "device",
      "field NVML_FI_DEV_NVLINK_GET_STATE (165) == NVML_FEATURE_ENABLED", values=_links_up,
      amd="amdsmi_get_gpu_xgmi_link_status: links U"),
    M("gpuprobe_interconnect_version", "gauge",
      "NVLink version of the device's links (4 on Hopper).", "", "device",
      "field NVML_FI_DEV_NVLINK_GET_VERSION (166, nvmlNvlinkVersion_t) of the first link "
      "that answers",
      values=one(lambda d: d.interconnect.version), amd="absent"),
    M("gpuprobe_interconnect_link_width", "gauge", "Lanes of each GPU-to-GPU link.", "",
      "device", "absent: NVML does not report NVLink width",
      values=one(lambda d: d.interconnect.link_width),
      amd="gpu_metrics xgmi_link_width (lanes), where amdsmi_get_gpu_xgmi_link_status "
      "lists links"),
    M("gpuprobe_interconnect_link_speed_bytes_per_second", "gauge",
      "Signalling rate of one GPU-to-GPU link per direction, in bytes per second.", "bytes",
      "device", "absent: NVML does not report NVLink speed this way",
      values=one(lambda d: d.interconnect.link_speed_bytes_per_second),
      amd="gpu_metrics xgmi_link_speed (Gbps per lane) x 1e9 x xgmi_link_width / 8"),
    M("gpuprobe_interconnect_transmit_bytes_total", "counter",
      "Bytes the device sent over all its GPU-to-GPU links since the driver loaded.",
      "bytes", "device",
      "the sum of the links' field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX (138, KiB)",
      values=one(lambda d: d.interconnect.tx_bytes_total),
      amd="gpu_metrics xgmi_write_data_acc (KB, x 1000) summed over the links "
      "amdsmi_get_gpu_xgmi_link_status lists"),
    M("gpuprobe_interconnect_receive_bytes_total", "counter",
      "Bytes the device received over all its GPU-to-GPU links since the driver loaded.",
      "bytes", "device",
      "the sum of the links' field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX (139, KiB)",
      values=one(lambda d: d.interconnect.rx_bytes_total),
      amd="gpu_metrics xgmi_read_data_acc (KB, x 1000) summed over the links "
      "amdsmi_get_gpu_xgmi_link_status lists"),
    M("gpuprobe_interconnect_errors_total", "counter",
      "Errors over all the device's GPU-to-GPU links, by kind (crc: CRC errors the data "
      "link layer detected; replay: packets it sent again; recovery: times a link "
      "retrained), since the driver loaded.", "", "device",
      "the links' fields (below) summed", labels=("kind",),
      values=keyed(lambda d: d.interconnect.errors),
      amd="absent: amdsmi reports an XGMI error status, not counts"),
    M("gpuprobe_link_up", "gauge",
      "1 while a GPU-to-GPU link is up, 0 while it is down or not connected (config "
      "exporter.link_metrics, off by default).", "", "link",
      "field NVML_FI_DEV_NVLINK_GET_STATE (165, scopeId = link)",
      labels=("link",), values=_links(lambda link: link.up),
      amd="amdsmi_get_gpu_xgmi_link_status: U is 1, D and X 0"),
    M("gpuprobe_link_transmit_bytes_total", "counter",
      "Bytes the device sent over one GPU-to-GPU link since the driver loaded (config "
      "exporter.link_metrics, off by default).", "bytes", "link",
      "field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX (138, KiB, scopeId = link)",
      labels=("link",), values=_links(lambda link: link.tx_bytes_total),
      amd="gpu_metrics xgmi_write_data_acc[link] (KB since the driver loaded, x 1000)"),
    M("gpuprobe_link_receive_bytes_total", "counter",
      "Bytes the device received over one GPU-to-GPU link since the driver loaded (config "
      "exporter.link_metrics, off by default).", "bytes", "link",
      "field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX (139, KiB, scopeId = link)",
      labels=("link",), values=_links(lambda link: link.rx_bytes_total),
      amd="gpu_metrics xgmi_read_data_acc[link] (KB since the driver loaded, x 1000)"),
    M("gpuprobe_link_errors_total", "counter",
      "Errors on one GPU-to-GPU link by kind (crc, replay, recovery) since the driver "
      "loaded (config exporter.link_metrics, off by default).", "", "link",
      "fields NVML_FI_DEV_NVLINK_ERROR_DL_CRC (163), _DL_REPLAY (161), _DL_RECOVERY (162), "
      "scopeId = link, in one batched nvmlDeviceGetFieldValues call",
      labels=("link", "kind"), values=_link_errors,
      amd="absent: amdsmi reports an XGMI error status, not counts"),
    # -- processes -------------------------------------------------------------------------
    M("gpuprobe_process_memory_used_bytes", "gauge",
      "Device memory a process holds, in bytes. The largest processes per device are kept "
      "(config exporter.max_processes_per_device); ended processes disappear.", "bytes",
      "process", "nvmlDeviceGetComputeRunningProcesses, GetGraphicsRunningProcesses, "
      "GetMPSComputeRunningProcesses .usedGpuMemory; name and start time from /proc/<pid>/stat, "
      "container_id and pod_uid from /proc/<pid>/cgroup; namespace and pod from the name of the "
      "kubelet's pod directory <namespace>_<pod>_<pod_uid> in /var/log/pods (host.pod_logs_dir)",
      labels=_PROCESS_LABELS,
      amd=(
      'amdsmi_get_gpu_process_list memory_usage.vram_mem (bytes), per partition; pids '
      "not in /proc and the daemon's own are dropped; name, start time, container and "
      'pod from /proc and /var/log/pods, as on NVIDIA'),
      samples=_process(lambda p: p.used_memory_bytes)),
    M("gpuprobe_process_utilization_ratio", "gauge",
      "Share of its most recent interval the graphics/compute engine worked for the "
      "process (NVIDIA: the driver's last sample period; AMD: between two listings).",
      "ratio", "process",
      "nvmlDeviceGetProcessesUtilizationInfo, on older drivers nvmlDeviceGetProcessUtilization: "
      "smUtil (%) of the process's latest sample since the previous listing; 0 for a listed "
      "process the driver has no sample of (it samples only processes that ran); absent on "
      "MIG instances",
      labels=_PROCESS_LABELS,
      amd="amdsmi_get_gpu_process_list engine_usage.gfx (cumulative ns), its growth over the "
      "wall time between listings",
      samples=_process(lambda p: p.busy_ratio)),
    M("gpuprobe_device_processes", "gauge",
      "Processes holding memory on the device, all of them (not capped).", "", "device",
      "length of the process lists above",
      amd=(
      'length of amdsmi_get_gpu_process_list after those drops'),
      samples=_device_processes),
    # -- memory-leak detector (daemon/analysis/leaks.py; docs/leaks.md) ---------------------
    M("gpuprobe_memory_growth_bytes_per_second", "gauge",
      "Robust (Theil-Sen) growth rate of the device's used memory over the leak detector's "
      "window, in bytes per second; negative when it shrinks.",
      "bytes", "leak", "derived by gpuprobe from gpuprobe_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_memory_used_bytes",
      samples=_leak("device", lambda x: x.growth_bytes_per_second, _rate_shown)),
    M("gpuprobe_memory_leak_suspected", "gauge",
      "1 while the leak detector sees sustained growth of the device's used memory that a "
      "sawtooth, a warm-up, peaks or noise do not explain, 0 otherwise.",
      "", "leak", "derived by gpuprobe from gpuprobe_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_memory_used_bytes",
      samples=_leak("device", lambda x: x.suspected)),
    M("gpuprobe_memory_leak_confidence_ratio", "gauge",
      "How sure the leak detector is of the growth of the device's used memory (0-1): its margin "
      "over the noise and how long it has lasted. Present only while growth is seen.",
      "ratio", "leak", "derived by gpuprobe from gpuprobe_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_memory_used_bytes",
      samples=_leak("device", lambda x: x.confidence, _growing)),
    M("gpuprobe_memory_growth_duration_seconds", "gauge",
      "How long the leak-like growth of the device's used memory has lasted without a break "
      "longer than leaks.max_pause; present only while growth is seen.",
      "seconds", "leak", "derived by gpuprobe from gpuprobe_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_memory_used_bytes",
      samples=_leak("device", lambda x: x.growth_seconds, _growing)),
    M("gpuprobe_memory_exhaustion_seconds", "gauge",
      "Projected time until the device's memory is full if the device's used memory goes on "
      "growing at its current rate; present only while a leak is suspected.",
      "seconds", "leak", "derived by gpuprobe from gpuprobe_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_memory_used_bytes",
      samples=_leak("device", lambda x: x.exhaustion_seconds)),
    M("gpuprobe_process_memory_growth_bytes_per_second", "gauge",
      "Robust (Theil-Sen) growth rate of the process's memory over the leak detector's window, in"
      " bytes per second; present only while growth is seen.",
      "bytes", "process_leak", "derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      labels=_PROCESS_LABELS,
      samples=_leak("process", lambda x: x.growth_bytes_per_second, _rate_shown)),
    M("gpuprobe_process_memory_leak_suspected", "gauge",
      "1 while the leak detector sees sustained growth of the process's memory that a sawtooth, a"
      " warm-up, peaks or noise do not explain, 0 otherwise. Suspected processes are always "
      "exported, even beyond exporter.max_processes_per_device.",
      "", "process_leak", "derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      labels=_PROCESS_LABELS,
      samples=_leak("process", lambda x: x.suspected)),
    M("gpuprobe_process_memory_leak_confidence_ratio", "gauge",
      "How sure the leak detector is of the growth of the process's memory (0-1): its margin over"
      " the noise and how long it has lasted. Present only while growth is seen.",
      "ratio", "process_leak", "derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      labels=_PROCESS_LABELS,
      samples=_leak("process", lambda x: x.confidence, _growing)),
    M("gpuprobe_process_memory_growth_duration_seconds", "gauge",
      "How long the leak-like growth of the process's memory has lasted without a break longer "
      "than leaks.max_pause; present only while growth is seen.",
      "seconds", "process_leak", "derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      labels=_PROCESS_LABELS,
      samples=_leak("process", lambda x: x.growth_seconds, _growing)),
    M("gpuprobe_process_memory_exhaustion_seconds", "gauge",
      "Projected time until the device's memory is full if the process's memory goes on growing "
      "at its current rate; present only while a leak is suspected.",
      "seconds", "process_leak", "derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      amd="derived by gpuprobe from gpuprobe_process_memory_used_bytes",
      labels=_PROCESS_LABELS,
      samples=_leak("process", lambda x: x.exhaustion_seconds)),
    # -- active probes ---------------------------------------------------------------------
    # the metrics of each probe kind's values, from its table (daemon/core/probekinds.py)
    *(_probe_metric(kind, m) for kind in PROBE_KINDS for m in kind.metrics),
    M("gpuprobe_probe_duration_seconds", "gauge",
      "Wall time of the last probe run, child process start to exit.", "seconds", "probe",
      "orchestrator", "orchestrator", labels=("probe",),
      samples=_probe(_probe_field(lambda ps: (({}, ps.duration_seconds),)))),
    M("gpuprobe_probe_last_success_timestamp_seconds", "gauge",
      "Unix time of the last successful probe run.", "seconds", "probe", "orchestrator",
      "orchestrator", labels=("probe",),
      samples=_probe(_probe_field(lambda ps: (({}, ps.last_success),)))),
    M("gpuprobe_probe_runs_total", "counter",
      "Probe runs by outcome: ok, skipped (see gpuprobe_probe_skips_total), failed, timeout "
      "(killed at probes.timeout), discarded (a process appeared during the run). ok, "
      "failed and timeout start at 0; skipped and discarded appear with their first run.", "",
      "probe", "orchestrator", "orchestrator", labels=("probe", "outcome"),
      samples=_probe(_probe_field(lambda ps: (({"outcome": o}, ps.runs.get(o, 0))
                                              for o in PROBE_OUTCOMES
                                              if o in ALWAYS_OUTCOMES or ps.runs.get(o))))),
    M("gpuprobe_probe_skips_total", "counter",
      "Probe runs skipped, by reason: device_down, mig (a MIG instance or a GPU in MIG "
      "mode), partitioned (an AMD partition or a partitioned AMD GPU), compute_mode, mps, "
      "thermal, busy, processes, no_runtime.", "", "probe", "orchestrator", "orchestrator",
      labels=("probe", "reason"),
      samples=_probe(_probe_field(lambda ps: (({"reason": r}, n)
                                              for r, n in sorted(ps.skips.items()))))),
    M("gpuprobe_probe_gpu_seconds_total", "counter",
      "Time probes held a context on the GPU, in seconds; the duty cycle is its rate.",
      "seconds", "probe", "probe child (context retained to released)",
      "probe child (device set to synchronized)", labels=("probe",),
      samples=_probe(_probe_field(lambda ps: (({}, ps.gpu_seconds_total),)))),
    # -- gpuprobe itself -------------------------------------------------------------------
    M("gpuprobe_collector_up", "gauge",
      "1 when the collector's last run succeeded and is not stalled.", "", "collector",
      "scheduler", labels=("collector",),
      amd=(
      'scheduler'),
      samples=_collector(lambda h: (({}, h.up),))),
    M("gpuprobe_collector_stalled", "gauge",
      "1 while a collector's call is past its deadline; it is not called again until the call "
      "returns.", "", "collector", "scheduler", labels=("collector",),
      amd=(
      'scheduler'),
      samples=_collector(lambda h: (({}, h.stalled),))),
    M("gpuprobe_collector_last_success_timestamp_seconds", "gauge",
      "Unix time of the collector's last successful run.", "seconds", "collector", "scheduler",
      labels=("collector",),
      amd=(
      'scheduler'),
      samples=_collector(lambda h: (({}, h.last_success),))),
    M("gpuprobe_collector_duration_seconds", "gauge",
      "How long the collector's last run took, in seconds.", "seconds", "collector",
      "scheduler", labels=("collector",),
      amd=(
      'scheduler'),
      samples=_collector(lambda h: (({}, h.last_duration),))),
    M("gpuprobe_collector_errors_total", "counter",
      "Vendor-call errors by class: unsupported (metric absent, not asked again), transient "
      "(retried next cycle), device_fatal, library_fatal; timeout (run past its deadline) and "
      "internal (a bug in gpuprobe). internal starts at 0; the others appear with their first "
      "error.", "", "collector", "the backend's error choke point",
      labels=("collector", "class"),
      amd=(
      "the backend's error choke point (amdsmi status codes and the binding's Python "
      'errors)'),
      samples=_collector(lambda h: (({"class": c}, h.errors_total.get(c, 0))
                                    for c in ERROR_CLASSES
                                    if c == "internal" or h.errors_total.get(c)))),
    M("gpuprobe_backend_up", "gauge",
      "1 when the vendor library is loaded and initialised; 0 while it is missing or being "
      "re-initialised.", "", "backend", "nvmlInit", labels=("backend",),
      amd=(
      'amdsmi_init after an isolated preflight (child process)'),
      samples=_backend(lambda b: (({}, b.up),))),
    M("gpuprobe_backend_info", "info", "Versions of a vendor library and driver; always 1.", "",
      "backend", "nvmlSystemGetNVMLVersion, nvmlSystemGetDriverVersion",
      labels=("backend", "library_version", "driver_version", "binding_version"),
      amd="amdsmi_get_lib_version (library), amdsmi.__version__ (binding_version), "
      "get_gpu_driver_info",
      samples=_backend(_backend_info)),
    M("gpuprobe_backend_version_mismatch", "gauge",
      "1 when the vendor library's Python binding was not made for the installed library "
      "(the AMD backend then refuses to run unless amd.allow_version_mismatch), 0 when they "
      "match; absent when it cannot be told.", "", "backend",
      "absent: pynvml binds symbols lazily and degrades per call", labels=("backend",),
      amd="amdsmi.__version__ against amdsmi_get_rocm_version(), checked in the preflight",
      samples=_backend(lambda b: (({}, b.version_mismatch),))),
    M("gpuprobe_http_requests_total", "counter",
      "HTTP requests answered, by handler (metrics, healthz, readyz, landing, other) and "
      "status code.", "", "http", "HTTP server", "HTTP server", labels=("handler", "code")),
    M("gpuprobe_http_refused_total", "counter",
      "Connections and requests refused, by reason: connection_limit, evicted, "
      "header_timeout, write_timeout, bad_request, tls_handshake, client_certificate, "
      "plain_http_on_tls_port, tls_on_plain_port, unauthorized, rate_limited, busy, "
      "accept_error (docs/security.md).", "", "http", "HTTP server", "HTTP server",
      labels=("reason",)),
    M("gpuprobe_http_connections", "gauge", "HTTP connections open now.", "", "http",
      "HTTP server", "HTTP server"),
    M("gpuprobe_http_connections_max", "gauge",
      "The most HTTP connections served at once: http.max_connections, lowered when "
      "RLIMIT_NOFILE leaves too few file descriptors.", "", "http", "HTTP server",
      "HTTP server"),
    M("gpuprobe_web_config_last_reload_successful", "gauge",
      "1 when the web config file (TLS, basic auth) in force is the file's current content, "
      "0 when its last change failed to load and the previous one is still served; absent "
      "without a web config file.", "", "http", "web config file", "web config file"),
    M("gpuprobe_web_config_last_reload_success_timestamp_seconds", "gauge",
      "Unix time the web config file was last loaded successfully; absent without one.",
      "seconds", "http", "web config file", "web config file"),
    M("gpuprobe_build_info", "info", "gpuprobe's version and Python's; always 1.", "", "build",
      "package metadata", labels=("version", "python_version"),
      amd=(
      'package metadata'),
      samples=lambda s: ((s.build, 1),)),
)

BY_NAME = {m.name: m for m in CATALOG}


def markdown() -> str:
    """The metric table for docs/metrics.md."""
    scope_labels = {"device": DEVICE_LABELS, "link": DEVICE_LABELS, "process": DEVICE_LABELS,
                    "xid": DEVICE_LABELS,
                    "event": DEVICE_LABELS,
                    "leak": DEVICE_LABELS, "process_leak": DEVICE_LABELS,
                    "probe": DEVICE_LABELS, "collector": (), "backend": (), "build": (),
                    "http": ()}
    lines = ["| Metric | Type | Unit | Labels | Meaning | NVIDIA source | AMD source |",
             "|---|---|---|---|---|---|---|"]
    for m in CATALOG:
        labels = ", ".join((*scope_labels[m.scope], *m.labels)) or "-"
        lines.append(f"| `{m.name}` | {m.type} | {m.unit or '-'} | {labels} | {m.help} | "
                     f"{m.nvidia} | {m.amd} |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- BEGIN GENERATED: python -m gpuprobe.daemon.export.catalog --write docs/metrics.md -->"
END = "<!-- END GENERATED -->"


def render_doc(existing: str) -> str:
    """``existing`` with the part between the markers replaced by the current table."""
    head, found, rest = existing.partition(BEGIN)
    if not found:
        raise ValueError(f"marker {BEGIN!r} not found")
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{markdown()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="rewrite the generated part of FILE")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(render_doc(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
