"""The ``amd`` collector: per-device telemetry through amdsmi, in the vendor-neutral model.

Each physical GPU is read in its own lane through partition 0's handle; its partitions are
read in the same lane through their own handles, for what is theirs (memory, activity).
amdsmi's units are turned into base units here and in :mod:`.library`, nowhere else:

* temperatures (edge, hotspot, memory) from ``amdsmi_get_temp_metric``; thresholds CRITICAL
  as ``slowdown`` and EMERGENCY as ``shutdown``, read once;
* power from ``current_socket_power`` (MI300) or ``average_socket_power`` (older parts,
  Radeon); the cap is in microwatts; energy is ticks times the counter resolution;
* power cap bounds (min, max, default) from ``amdsmi_get_power_cap_info``, in microwatts;
  fans as ``amdsmi_get_gpu_fan_speed`` over ``amdsmi_get_gpu_fan_speed_max`` per sensor;
* throttling from the raw ``indep_throttle_status`` bitmask (the 7.0.2 binding's dict turns
  it into one bool), decoded to the shared reason names, and throttle time from the
  firmware's residency accumulators, and the gfx-clock-below-host-limit ones per XCC;
* PCIe bytes both ways from gpu_metrics ``pcie_bandwidth_acc`` (MI300), with which the
  slow collector no longer makes the one-second throughput call;
* XGMI links in :mod:`.links`;
* activity from ``amdsmi_get_gpu_activity``, or per XCC from gpu_metrics' ``xcp_stats`` on
  MI300, whose single gfx figure is retired when partitioned;
* ECC, per-block RAS counts and bad pages, at most every ``amd.ras_interval``.

The slow calls (violation status, PCIe throughput where there is no byte counter) are made
by the ``amd_slow`` collector on their own threads; it publishes their figures as
supplements that the snapshot merges into these samples (daemon/core/state.py).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpuprobe.daemon.core.model import (
    Clocks,
    DeviceSample,
    Errors,
    Memory,
    Pcie,
    Power,
    Thermal,
    Throttle,
)
from gpuprobe.probes.amd.library import (
    clean,
    energy_joules,
    generation_from_mts,
    generation_from_tenths_gts,
    mhz_to_hertz,
    microwatts_to_watts,
    number,
    percent_ratio,
)
from gpuprobe.probes.amd.links import read_links
from gpuprobe.probes.amd.session import SENSORS, AmdDevice, AmdSession
from gpuprobe.probes.backend import TRANSIENT, Query, Telemetry, within

# (clock label, AmdSmiClkType member)
CLOCKS = (("graphics", "GFX"), ("memory", "MEM"), ("soc", "SOC"), ("video", "VCLK0"))

# Kernel SMU_THROTTLER_*_BIT ranges of indep_throttle_status, mapped to shared reasons where
# the meaning matches NVIDIA's: package power limits are a power cap; firmware thermal limits
# are software (firmware) thermal slowdown; memory and HBM temperature has its own reason;
# PROCHOT and VRHOT are hardware signals that cut clocks (NVIDIA's hw_slowdown); current and
# EDC limits have no NVIDIA counterpart.
THROTTLE_BITS: tuple[tuple[range, str], ...] = (
    (range(0, 8), "power_cap"),  # PPT0-3, SPL, FPPT, SPPT, SPPT_APU
    (range(16, 24), "current_limit"),  # TDC_*, EDC_*, APCC
    (range(32, 34), "sw_thermal"),  # TEMP_GPU, TEMP_CORE
    (range(34, 35), "memory_thermal"),  # TEMP_MEM
    (range(35, 44), "sw_thermal"),  # TEMP_EDGE, TEMP_HOTSPOT, TEMP_SOC, TEMP_VR_*, LIQUID
    (range(44, 48), "hw_slowdown"),  # VRHOT0-1, PROCHOT_CPU, PROCHOT_GFX
)
BITMASK_REASONS = frozenset(r for _, r in THROTTLE_BITS)
# gpu_metrics residency accumulators -> reason (each / accumulation_counter is the share of
# time that limiter was active)
RESIDENCIES = (("ppt_residency_acc", "power_cap"), ("socket_thm_residency_acc", "sw_thermal"),
               ("hbm_thm_residency_acc", "memory_thermal"),
               ("prochot_residency_acc", "hw_slowdown"))
# gpu_metrics v1.8 xcp_stats accumulators of time the gfx clock was below the host's limit
# -> reason; the older total (v1.7) only where the newer is absent
HOST_LIMITS = (("xcp_stats.gfx_below_host_limit_ppt_acc", "host_limit_power"),
               ("xcp_stats.gfx_below_host_limit_thm_acc", "host_limit_thermal"),
               ("xcp_stats.gfx_below_host_limit_total_acc", "host_limit"),
               ("xcp_stats.gfx_below_host_limit_acc", "host_limit"))
MAX_FANS = 4  # fan sensors asked for (amdsmi has no count; boards have one or two)
ECC_BLOCKS = ("UMC", "SDMA", "GFX", "MMHUB", "ATHUB", "PCIE_BIF", "HDP", "XGMI_WAFL", "DF",
              "SMN", "SEM", "MP0", "MP1", "FUSE", "MCA", "VCN", "JPEG", "IH", "MPIO")


def runtime_suspended(bdf: str, sysfs: str = "/sys") -> bool:
    """Whether the kernel has put the GPU to sleep (runtime PM, Radeon): reading gpu_metrics
    would wake it and report clocks and activity latched high for seconds."""
    try:
        with open(f"{sysfs}/bus/pci/devices/{bdf}/power/runtime_status") as f:
            return f.read().strip() == "suspended"
    except OSError:
        return False


def decode_throttle(mask: int) -> frozenset[str]:
    return frozenset(reason for bits, reason in THROTTLE_BITS
                     if any(mask >> b & 1 for b in bits))


def raw_throttle_mask(lib: Any, handle: Any) -> int | None:
    """indep_throttle_status as the bitmask it is, from the binding's ctypes layer (its dict
    API returns a bool). Raises the library's exception for a non-zero status."""
    wrapper = getattr(lib, "amdsmi_wrapper", None)
    if wrapper is None or not hasattr(wrapper, "amdsmi_gpu_metrics_t"):
        return None
    metrics = wrapper.amdsmi_gpu_metrics_t()
    status = wrapper.amdsmi_get_gpu_metrics_info(handle, ctypes.byref(metrics))
    if status:
        raise lib.AmdSmiLibraryException(int(status))
    return clean(int(metrics.indep_throttle_status), 64)


def xcc_busy(metrics: Mapping[str, Any] | None, partition: int) -> dict[str, float]:
    """Per-XCC busy ratios of one partition from gpu_metrics' xcp_stats (MI300)."""
    rows = (metrics or {}).get("xcp_stats.gfx_busy_inst")
    if not isinstance(rows, list) or not rows:
        return {}
    out: dict[str, float] = {}
    for p in (partition, 0) if partition else (0,):
        if p < len(rows) and isinstance(rows[p], list):
            for i, v in enumerate(rows[p]):
                ratio = percent_ratio(v)
                if ratio is not None:
                    out[str(i)] = ratio
        if out:
            break
    return out


def xcc_mean(metrics: Mapping[str, Any], key: str) -> float | None:
    """The mean over the XCCs that report it of a per-XCP, per-XCC xcp_stats field."""
    rows = metrics.get(key)
    if not isinstance(rows, list):
        return None
    values = [v for row in rows if isinstance(row, list) for x in row
              if (v := number(x, 64)) is not None]
    return sum(values) / len(values) if values else None


def clock(metrics: Mapping[str, Any]) -> tuple[float | None, float]:
    """(accumulation_counter, the sample's time in seconds): the driver's timestamp of the
    table (system_clock_counter, ns) where it has one."""
    clock_ns = number(metrics.get("system_clock_counter"), 64)
    return (number(metrics.get("accumulation_counter"), 64),
            clock_ns / 1e9 if clock_ns else time.monotonic())


def accumulated(state: dict[Any, Any], name: str) -> dict[str, float]:
    """What :func:`accumulate` last returned under ``name`` (a poll without gpu_metrics)."""
    st = state.get(name)
    return dict(st["totals"]) if st else {}


def accumulate(state: dict[Any, Any], name: str, counter: float | None, now: float,
               raw: Mapping[str, float], cap: float | None = None
               ) -> tuple[dict[str, float], set[str]]:
    """Totals of firmware accumulators (``raw``: key -> value) that grow by a value per
    accumulation tick, counted from the first call: each poll adds Δvalue /
    Δaccumulation_counter (at most ``cap``) times the seconds since the last poll. Returns
    the totals and the keys that grew. An accumulator that went back (a driver reload, a
    reset) adds nothing that poll."""
    if counter is None or not raw:
        return {}, set()
    st = state.get(name)
    if st is None:
        state[name] = {"counter": counter, "raw": dict(raw), "t": now,
                       "totals": dict.fromkeys(raw, 0.0)}
        return dict.fromkeys(raw, 0.0), set()
    d_counter, dt = counter - st["counter"], now - st["t"]
    grown = set()
    if d_counter > 0 and dt > 0:
        for key, value in raw.items():
            delta = value - st["raw"].get(key, value)
            if delta < 0:
                continue
            rate = delta / d_counter if cap is None else min(cap, delta / d_counter)
            st["totals"][key] = st["totals"].get(key, 0.0) + rate * dt
            if rate > 0:
                grown.add(key)
    st.update(counter=counter, raw=dict(raw), t=now)
    return dict(st["totals"]), grown


def pooled(own: Memory, children: list[DeviceSample], mode: str | None) -> Memory:
    """The physical GPU's memory from its partitions' figures, never counting the pool twice.

    In NPS1 (one memory pool; or the mode unknown) partitions may each show the whole pool
    (ROCm/ROCm#4750) or an even share of it (amdsmi#97); the library does not say which.
    Partitions that all report the same total and the same used figure (within 1 % of the
    total: the reads are a few ms apart) are read as the pool repeated, and the pool is taken
    once (the common total, the largest used figure); otherwise each partition's figures are
    its own and are summed, as they are in a memory split (NPS2/4/8). An idle host that
    splits evenly can thus show one share for a while (an undercount, never a double count).
    Host-side figures (BAR, GTT) stay partition 0's.
    """
    totals = [c.memory.total_bytes for c in children]
    used = [c.memory.used_bytes for c in children]
    shared = (mode in (None, "NPS1") and None not in totals and None not in used
              and len(set(totals)) == 1
              and max(used) - min(used) <= 0.01 * totals[0])  # type: ignore[operator,type-var]
    total = None if None in totals else (
        totals[0] if shared else sum(totals))  # type: ignore[arg-type]
    in_use = None if None in used else (
        max(used) if shared else sum(used))  # type: ignore[arg-type,type-var]
    return Memory(total_bytes=total, used_bytes=in_use,
                  free_bytes=total - in_use if total is not None and in_use is not None
                  else None,
                  bar1_total_bytes=own.bar1_total_bytes, bar1_used_bytes=own.bar1_used_bytes,
                  gtt_total_bytes=own.gtt_total_bytes, gtt_used_bytes=own.gtt_used_bytes)


class Reader:
    """Reads one physical GPU (and its partitions) for one poll."""

    def __init__(self, session: AmdSession, q: Query, ras_interval: float) -> None:
        self.session = session
        self.lib = session.lib
        self.q = q
        self.ras_interval = ras_interval

    def gpu(self, dev: AmdDevice) -> list[DeviceSample]:
        if runtime_suspended(dev.bdf):  # asleep: read nothing that would wake it
            return [DeviceSample(identity=dev.identity, up=True, memory=self._memory(dev))]
        children = [self.partition(c) for c in dev.children]
        return [self.physical(dev, children), *children]

    # -- partitions -------------------------------------------------------------------------

    def _memory(self, dev: AmdDevice) -> Memory:
        lib, q, h = self.lib, self.q, dev.handle
        types = lib.AmdSmiMemoryType
        total = q(dev, "memory.total", lib.amdsmi_get_gpu_memory_total, h, types.VRAM)
        used = q(dev, "memory.used", lib.amdsmi_get_gpu_memory_usage, h, types.VRAM)
        total, used = clean(total, 64), clean(used, 64)
        bar_total = bar_used = gtt_total = gtt_used = None
        if dev.parent is None:
            bar_total = clean(q(dev, "memory.vis.total", lib.amdsmi_get_gpu_memory_total, h,
                                types.VIS_VRAM), 64)
            bar_used = clean(q(dev, "memory.vis.used", lib.amdsmi_get_gpu_memory_usage, h,
                               types.VIS_VRAM), 64)
            gtt_total = clean(q(dev, "memory.gtt.total", lib.amdsmi_get_gpu_memory_total, h,
                                types.GTT), 64)
            gtt_used = clean(q(dev, "memory.gtt.used", lib.amdsmi_get_gpu_memory_usage, h,
                               types.GTT), 64)
        return Memory(
            total_bytes=total, used_bytes=used,
            free_bytes=total - used if total is not None and used is not None else None,
            bar1_total_bytes=bar_total, bar1_used_bytes=bar_used,
            gtt_total_bytes=gtt_total, gtt_used_bytes=gtt_used)

    def _metrics(self, dev: AmdDevice) -> dict[str, Any] | None:
        m = self.q(dev, "gpu_metrics", self.lib.amdsmi_get_gpu_metrics_info, dev.handle)
        return m if isinstance(m, dict) else None

    def partition(self, dev: AmdDevice) -> DeviceSample:
        metrics = self._metrics(dev)
        xcc = xcc_busy(metrics, dev.partition_index or 0)
        util = {"gpu": sum(xcc.values()) / len(xcc)} if xcc else {}
        return DeviceSample(identity=dev.identity, up=True, memory=self._memory(dev),
                            utilization=util, xcc_utilization=xcc)

    # -- the physical GPU -------------------------------------------------------------------

    def physical(self, dev: AmdDevice, children: list[DeviceSample]) -> DeviceSample:
        lib, q, h = self.lib, self.q, dev.handle
        s = dev.static
        if children:
            memory = pooled(self._memory(dev), children, dev.identity.memory_partition)
        else:
            memory = self._memory(dev)

        temps = {}
        kinds, metric = lib.AmdSmiTemperatureType, lib.AmdSmiTemperatureMetric
        for sensor, member in SENSORS:
            v = number(q(dev, f"temperature.{sensor}", lib.amdsmi_get_temp_metric, h,
                         getattr(kinds, member), metric.CURRENT), 16)
            if v:  # 0 means the sensor is not there
                temps[sensor] = v

        power = q(dev, "power", lib.amdsmi_get_power_info, h) or {}
        draw = number(power.get("current_socket_power"), 16)
        if draw is None:
            draw = number(power.get("average_socket_power"), 16)
        cap = q(dev, "power.cap", lib.amdsmi_get_power_cap_info, h) or {}
        fans = self._fans(dev)
        energy = q(dev, "energy", lib.amdsmi_get_energy_count, h)

        clocks, maximum = {}, {}
        for label, member in CLOCKS:
            info = q(dev, f"clock.{label}", lib.amdsmi_get_clock_info, h,
                     getattr(lib.AmdSmiClkType, member))
            if isinstance(info, dict):
                if (hz := mhz_to_hertz(info.get("clk"))) is not None:
                    clocks[label] = hz
                if (hz := mhz_to_hertz(info.get("max_clk"))) is not None:
                    maximum[label] = hz

        metrics = self._metrics(dev)
        util: dict[str, float] = {}
        xcc: dict[str, float] = {}
        if children:
            busy = [c.utilization["gpu"] for c in children if "gpu" in c.utilization]
            if busy:
                util["gpu"] = sum(busy) / len(busy)
        else:
            xcc = xcc_busy(metrics, 0)
            if xcc:
                util["gpu"] = sum(xcc.values()) / len(xcc)
        activity = q(dev, "activity", lib.amdsmi_get_gpu_activity, h) or {}
        for engine, key in (("gpu", "gfx_activity"), ("memory", "umc_activity"),
                            ("multimedia", "mm_activity")):
            ratio = percent_ratio(activity.get(key))
            if ratio is not None and engine not in util:
                util[engine] = ratio

        return DeviceSample(
            identity=dev.identity,
            up=True,
            memory=memory,
            thermal=Thermal(temperatures=temps, thresholds=s.get("thresholds", {})),
            power=Power(draw_watts=draw, limit_watts=microwatts_to_watts(cap.get("power_cap")),
                        energy_joules=energy_joules(energy),
                        limit_min_watts=microwatts_to_watts(cap.get("min_power_cap")),
                        limit_max_watts=microwatts_to_watts(cap.get("max_power_cap")),
                        limit_default_watts=microwatts_to_watts(cap.get("default_power_cap"))),
            clocks=Clocks(current=clocks, maximum=maximum),
            throttle=self._throttle(dev, metrics),
            pcie=self._pcie(dev, metrics),
            utilization=util,
            xcc_utilization=xcc,
            errors=self._errors(dev),
            fans=fans,
            interconnect=read_links(lib, dev, q, metrics),
        )

    def _fans(self, dev: AmdDevice) -> dict[str, float]:
        """Each fan's speed over its maximum, sensor by sensor until one is not there
        (amdsmi has no fan count; Instinct boards, passively cooled, have none). An
        unsupported sensor is remembered by the query, so the probe costs one call once."""
        lib, q, h = self.lib, self.q, dev.handle
        fans: dict[str, float] = {}
        for i in range(MAX_FANS):
            speed = number(q(dev, f"fan.{i}", lib.amdsmi_get_gpu_fan_speed, h, i), 64)
            if speed is None:
                break
            top = dev.state.get(("fan_max", str(i)))
            if top is None:
                # AMDSMI_MAX_FAN_SPEED is 255; a maximum past 16 bits is not a fan's
                top = within(number(q(dev, f"fan.{i}.max", lib.amdsmi_get_gpu_fan_speed_max,
                                      h, i), 64), 1, 0xFFFF)
                if top:
                    dev.state[("fan_max", str(i))] = top
            if top and 0 <= speed <= top:
                fans[str(i)] = speed / top
        return fans

    def _throttle(self, dev: AmdDevice, metrics: dict[str, Any] | None) -> Throttle:
        """Active reasons from the raw bitmask where the binding's struct is known to fit
        the library, else from which residency accumulators grew since the last poll;
        throttle time from the accumulators. With neither, none: the ``amd_slow``
        collector's violation flags fill the gap in the snapshot (probes/amd/slow.py)."""
        seconds = self._residency(dev, metrics)
        host = self._host_limits(dev, metrics)
        mask = None
        if self.session.version_mismatch is False:
            mask = self.q(dev, "throttle.raw", raw_throttle_mask, self.lib, dev.handle)
        if mask is not None:
            supported, active = BITMASK_REASONS, decode_throttle(mask)
        elif seconds:
            supported = frozenset(seconds)
            active = frozenset(dev.state.get("residency_active", ()))
        else:
            supported = active = frozenset()
        return Throttle(supported=supported, active=active,
                        seconds_total={**seconds, **host})

    def _residency(self, dev: AmdDevice, metrics: dict[str, Any] | None) -> dict[str, float]:
        """Cumulative seconds per reason from the firmware residency accumulators, counted
        from when gpuprobe first saw the device: share of Δaccumulation_counter times Δt."""
        if not metrics:
            return accumulated(dev.state, "residency")
        raw = {reason: number(metrics.get(key), 64) for key, reason in RESIDENCIES}
        seconds, grown = accumulate(dev.state, "residency", *clock(metrics),
                                    {r: v for r, v in raw.items() if v is not None}, cap=1.0)
        if seconds:
            dev.state["residency_active"] = grown
        return seconds

    def _host_limits(self, dev: AmdDevice, metrics: dict[str, Any] | None
                     ) -> dict[str, float]:
        """Seconds the gfx clock was held below the host's limit (for power, for thermal,
        for any reason), from gpu_metrics v1.8's per-XCC xcp_stats accumulators, converted
        as the residency accumulators are; the XCCs' mean (a share of the GPU's compute).
        Only in seconds_total: they restate limits the residencies already name."""
        if not metrics:
            return accumulated(dev.state, "host_limit")
        raw: dict[str, float] = {}
        for key, reason in HOST_LIMITS:
            v = xcc_mean(metrics, key)
            if v is not None and reason not in raw:
                raw[reason] = v
        return accumulate(dev.state, "host_limit", *clock(metrics), raw, cap=1.0)[0]

    def _transferred(self, dev: AmdDevice, metrics: dict[str, Any] | None) -> float | None:
        """PCIe bytes both ways since gpuprobe first saw the device, from gpu_metrics
        ``pcie_bandwidth_acc`` (MI300: the firmware adds the link's GB/s at each
        accumulation tick, so Δacc / Δaccumulation_counter is the mean GB/s, times Δt)."""
        if not metrics:
            got = accumulated(dev.state, "pcie_bandwidth")
        else:
            acc = number(metrics.get("pcie_bandwidth_acc"), 64)
            got = accumulate(dev.state, "pcie_bandwidth", *clock(metrics),
                             {"gb": acc} if acc is not None else {})[0]
        return got["gb"] * 1e9 if "gb" in got else None

    def _pcie(self, dev: AmdDevice, metrics: dict[str, Any] | None) -> Pcie:
        info = self.q(dev, "pcie", self.lib.amdsmi_get_pcie_info, dev.handle) or {}
        static, metric = info.get("pcie_static") or {}, info.get("pcie_metric") or {}
        gen = generation_from_mts(metric.get("pcie_speed"))
        width = clean(metric.get("pcie_width"), 16)
        if gen is None and metrics:
            gen = generation_from_tenths_gts(metrics.get("pcie_link_speed"))
        if width is None and metrics:
            width = clean(metrics.get("pcie_link_width"), 16)

        def count(key: str) -> int | None:
            v = clean(metric.get(key), 64)
            return int(v) if isinstance(v, int) else None

        return Pcie(
            generation=gen, width=width or None,
            max_generation=generation_from_mts(static.get("max_pcie_speed")),
            max_width=clean(static.get("max_pcie_width"), 16) or None,
            replays_total=count("pcie_replay_count"),
            recoveries_total=count("pcie_l0_to_recovery_count"),
            naks_received_total=count("pcie_nak_received_count"),
            naks_sent_total=count("pcie_nak_sent_count"),
            transferred_bytes_total=self._transferred(dev, metrics))

    def _errors(self, dev: AmdDevice) -> Errors:
        cached = dev.state.get("errors")
        if cached is not None and time.monotonic() - cached[0] < self.ras_interval:
            return cached[1]
        lib, q, h = self.lib, self.q, dev.handle
        transient_before = q.errors[TRANSIENT]
        enabled = clean(q(dev, "ecc.enabled", lib.amdsmi_get_gpu_ecc_enabled, h), 64)
        total = q(dev, "ecc.total", lib.amdsmi_get_gpu_total_ecc_count, h) or {}
        blocks: dict[tuple[str, str], int] = {}
        if enabled:
            for name in ECC_BLOCKS:
                block = getattr(lib.AmdSmiGpuBlock, name, None)
                if block is None or not enabled & int(block):
                    continue
                counts = q(dev, f"ecc.block.{name}", lib.amdsmi_get_gpu_ecc_count, h, block)
                for severity, key in (("corrected", "correctable_count"),
                                      ("uncorrected", "uncorrectable_count"),
                                      ("deferred", "deferred_count")):
                    v = clean((counts or {}).get(key), 64)
                    if isinstance(v, int):
                        blocks[(name.lower(), severity)] = v
        pages = q(dev, "bad_pages", lib.amdsmi_get_gpu_bad_page_info, h)
        retired: dict[str, int] = {}
        pending = None
        if isinstance(pages, list):
            statuses = [p.get("status") for p in pages if isinstance(p, dict)]
            retired["uncorrectable"] = sum(1 for st in statuses if st in (0, "RESERVED"))
            pending = any(st in (1, "PENDING") for st in statuses)

        def total_of(key: str) -> int | None:
            v = clean(total.get(key), 64)
            return int(v) if isinstance(v, int) and enabled else None

        errors = Errors(
            ecc_enabled=bool(enabled) if enabled is not None else None,
            ecc_corrected_total=total_of("correctable_count"),
            ecc_uncorrected_total=total_of("uncorrectable_count"),
            ecc_deferred_total=total_of("deferred_count"),
            ecc_blocks=blocks, retired_pages=retired, retired_pages_pending=pending)
        if q.errors[TRANSIENT] == transient_before:  # a failed read is retried next poll
            dev.state["errors"] = (time.monotonic(), errors)
        return errors


class AmdTelemetry(Telemetry[AmdSession, AmdDevice]):
    """Each physical GPU is read, with its partitions, in its own lane."""

    name = "amd"

    def __init__(self, session: AmdSession, clock: Callable[[], float],
                 ras_interval: float) -> None:
        super().__init__(session, clock)
        self.ras_interval = ras_interval

    def units(self) -> list[AmdDevice]:
        return self.session.physical()

    def members(self, dev: AmdDevice) -> list[AmdDevice]:
        return self.session.family(dev)

    def read(self, dev: AmdDevice, q: Query) -> list[DeviceSample]:
        return Reader(self.session, q, self.ras_interval).gpu(dev)
