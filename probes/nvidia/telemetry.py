"""The ``nvidia`` collector: per-device telemetry through NVML.

Each GPU is read in its own lane (daemon/core/relay.py); a GPU that does not answer by the
deadline is reported down (reason "timeout") and not called again until its hung call
returns, while the others report as usual. Counters (energy, ECC, PCIe bytes, replays,
throttle time) come from one batched ``nvmlDeviceGetFieldValues`` call per GPU; SM activity
and occupancy come from GPM on Hopper and newer. NVML units are converted to base units here
and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

from gpuprobe.daemon.core.model import (
    RECOVERY_ACTIONS,
    Activity,
    Clocks,
    DeviceSample,
    Errors,
    Memory,
    Pcie,
    Power,
    Recovery,
    Thermal,
    Throttle,
)
from gpuprobe.probes.backend import Query, Telemetry, within
from gpuprobe.probes.nvidia import fieldvalues
from gpuprobe.probes.nvidia.gpm import clamp_ratio, free_samples, read_gpm
from gpuprobe.probes.nvidia.links import NVLINK_MAX_LINKS, read_links
from gpuprobe.probes.nvidia.session import CLOCK_DOMAINS, NvDevice, NvmlSession

# nvmlDeviceGetFieldValues ids (NVML_FI_DEV_*), read in one batch per GPU.
F_ECC_CURRENT = 1
F_ECC_SBE_VOL, F_ECC_DBE_VOL, F_ECC_SBE_AGG, F_ECC_DBE_AGG = 3, 4, 5, 6
F_RETIRED_SBE, F_RETIRED_DBE, F_RETIRED_PENDING = 29, 30, 31
F_THROTTLE_POWER_CAP, F_THROTTLE_SYNC_BOOST = 74, 76  # CLOCKS_EVENT_REASON_*, ns
F_MEMORY_TEMP = 82  # celsius
F_ENERGY = 83  # mJ since the driver loaded
F_PCIE_REPLAY = 94
F_REMAP_COR, F_REMAP_UNC, F_REMAP_PENDING, F_REMAP_FAILURE = 142, 143, 144, 145
F_PCIE_RECOVERY = 169  # L0 to recovery transitions
F_PCIE_NAKS_RECEIVED, F_PCIE_NAKS_SENT = 174, 177
F_PCIE_TX_BYTES, F_PCIE_RX_BYTES = 197, 198
F_THROTTLE_SW_THERMAL, F_THROTTLE_HW_THERMAL, F_THROTTLE_HW_POWER_BRAKE = 269, 270, 271
# NVML_FI_DEV_PERF_POLICY_*: ns the clocks were held down by each policy (the H100 of
# docs/hardware/ answered all six: 115 s of low-utilization time at idle)
F_POLICY_THERMAL, F_POLICY_BOARD_LIMIT, F_POLICY_LOW_UTILIZATION = 75, 77, 78
F_POLICY_RELIABILITY, F_POLICY_APP_CLOCKS, F_POLICY_BASE_CLOCKS = 79, 80, 81
F_PCIE_REPLAY_ROLLOVER = 95
# NVML_FI_DEV_PCIE_COUNT_*: errors by kind
PCIE_ERROR_FIELDS = {"correctable": 173, "receiver_error": 175, "bad_tlp": 176,
                     "bad_dllp": 178, "non_fatal": 179, "fatal": 180,
                     "unsupported_request": 181, "lcrc": 182, "lane": 183}
F_RESET_STATUS, F_DRAIN_AND_RESET, F_RECOVERY_ACTION = 226, 227, 230
F_NVLINK_COUNT = 91

FIELD_IDS = (
    F_ECC_CURRENT, F_ECC_SBE_VOL, F_ECC_DBE_VOL, F_ECC_SBE_AGG, F_ECC_DBE_AGG,
    F_RETIRED_SBE, F_RETIRED_DBE, F_RETIRED_PENDING, F_THROTTLE_POWER_CAP,
    F_THROTTLE_SYNC_BOOST, F_MEMORY_TEMP, F_ENERGY, F_PCIE_REPLAY, F_REMAP_COR, F_REMAP_UNC,
    F_REMAP_PENDING, F_REMAP_FAILURE, F_PCIE_RECOVERY, F_PCIE_NAKS_RECEIVED, F_PCIE_NAKS_SENT,
    F_PCIE_TX_BYTES, F_PCIE_RX_BYTES, F_THROTTLE_SW_THERMAL, F_THROTTLE_HW_THERMAL,
    F_THROTTLE_HW_POWER_BRAKE, F_POLICY_THERMAL, F_POLICY_BOARD_LIMIT,
    F_POLICY_LOW_UTILIZATION, F_POLICY_RELIABILITY, F_POLICY_APP_CLOCKS, F_POLICY_BASE_CLOCKS,
    F_PCIE_REPLAY_ROLLOVER, *PCIE_ERROR_FIELDS.values(), F_RESET_STATUS, F_DRAIN_AND_RESET,
    F_RECOVERY_ACTION, F_NVLINK_COUNT,
)

THROTTLE_FIELDS = {
    "power_cap": F_THROTTLE_POWER_CAP,
    "sync_boost": F_THROTTLE_SYNC_BOOST,
    "sw_thermal": F_THROTTLE_SW_THERMAL,
    "hw_thermal": F_THROTTLE_HW_THERMAL,
    "hw_power_brake": F_THROTTLE_HW_POWER_BRAKE,
    "thermal": F_POLICY_THERMAL,
    "board_limit": F_POLICY_BOARD_LIMIT,
    "low_utilization": F_POLICY_LOW_UTILIZATION,
    "reliability": F_POLICY_RELIABILITY,
    "applications_clocks": F_POLICY_APP_CLOCKS,
    "base_clocks": F_POLICY_BASE_CLOCKS,
}

# nvmlClocksEventReason* bits
THROTTLE_BITS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks"),
    (0x4, "power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)

# nvmlComputeMode_t: EXCLUSIVE_THREAD (1) is no longer supported by drivers.
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}

# (domain, nvmlClockType_t, the call's key), keys made once rather than every poll
_CLOCK_KEYS = tuple((domain, clock, f"clock.{domain}") for domain, clock in CLOCK_DOMAINS)


def _reasons(mask: int | None) -> frozenset[str]:
    if mask is None:
        return frozenset()
    return frozenset(name for bit, name in THROTTLE_BITS if mask & bit)


def read_fields(session: NvmlSession, dev: NvDevice, q: Query
                ) -> tuple[dict[int, float], set[int]]:
    """The batched counters that this device supports, by field id, and the ids whose value
    came as a 64-bit integer."""
    lib = session.lib
    cached = dev.state.get("field_ids")
    if cached is None or cached[0] != len(dev.unsupported):
        cached = (len(dev.unsupported),
                  [f for f in FIELD_IDS if f"field.{f}" not in dev.unsupported])
        dev.state["field_ids"] = cached
    ids = cached[1]
    out: dict[int, float] = {}
    wide: set[int] = set()
    if not ids:
        return out, wide
    values = q(dev, "fields", lib.nvmlDeviceGetFieldValues, dev.handle, ids)
    if values is None:
        return out, wide
    for fid, ret, vtype, value in fieldvalues.decode(values):
        if ret != 0:  # this field's own error: unsupported ones are not asked again
            q.failed(dev, f"field.{fid}", lib.NVMLError(ret))
            continue
        if value is not None:
            out[fid] = value
            if vtype in (3, 4):  # unsigned / signed long long
                wide.add(fid)
    return out, wide


def _pcie_bytes(dev: NvDevice, fields: dict[int, float], wide: set[int],
                gpm: dict[str, float] | None) -> tuple[float | None, float | None]:
    """PCIe TX/RX byte counters, counted from when gpuprobe first saw the device.

    GPM's rates (Hopper+) are averages over the whole poll interval, so integrating them
    misses nothing. Without GPM, NVML's byte-counter fields are used; on the drivers seen so
    far they are 32 bits wide and wrap every 4 GiB (a tenth of a second at Gen5 speed), so
    their deltas are taken modulo 2**32: traffic of more than 4 GiB between two polls is
    undercounted there.
    """
    acc = dev.state.get("pcie_acc")
    now = time.monotonic()
    if "gpm" in dev.state:  # this GPU has GPM: count from its rates only
        if not gpm or "pcie_tx" not in gpm or "pcie_rx" not in gpm:
            return (acc["tx"], acc["rx"]) if acc else (None, None)  # no rate this poll
        if acc is None or "t" not in acc:  # first rate (after a transient, the field's count)
            acc = dev.state["pcie_acc"] = {"tx": acc["tx"] if acc else 0.0,
                                           "rx": acc["rx"] if acc else 0.0, "t": now}
        else:
            dt = now - acc["t"]
            acc["tx"] += gpm["pcie_tx"] * dt
            acc["rx"] += gpm["pcie_rx"] * dt
            acc["t"] = now
        return acc["tx"], acc["rx"]
    if F_PCIE_TX_BYTES not in fields or F_PCIE_RX_BYTES not in fields:
        return None, None
    raw = {"tx": fields[F_PCIE_TX_BYTES], "rx": fields[F_PCIE_RX_BYTES]}
    if acc is None:
        acc = dev.state["pcie_acc"] = {"tx": 0.0, "rx": 0.0, "raw": raw}
    else:
        for key, fid in (("tx", F_PCIE_TX_BYTES), ("rx", F_PCIE_RX_BYTES)):
            modulus = 2**64 if fid in wide else 2**32
            acc[key] += (raw[key] - acc["raw"][key]) % modulus
        acc["raw"] = raw
    return acc["tx"], acc["rx"]


def read_device(session: NvmlSession, dev: NvDevice, q: Query, gpm_enabled: bool
                ) -> DeviceSample:
    lib, h = session.lib, dev.handle
    if dev.parent is not None:
        return _read_mig(session, dev, q, gpm_enabled)
    s = dev.static

    mem = q.first(dev, "memory", [
        (lambda: lib.nvmlDeviceGetMemoryInfo(h, version=lib.nvmlMemory_v2), ()),
        (lib.nvmlDeviceGetMemoryInfo, (h,)),
    ])
    bar1 = q(dev, "bar1", lib.nvmlDeviceGetBAR1MemoryInfo, h)
    fields, wide = read_fields(session, dev, q)

    temps = {}
    gpu_temp = q.first(dev, "temperature", [
        ("nvmlDeviceGetTemperatureV", (h, 0)),
        ("nvmlDeviceGetTemperature", (h, 0)),
    ])
    if gpu_temp is not None:
        temps["gpu"] = float(gpu_temp)
    if fields.get(F_MEMORY_TEMP):
        temps["memory"] = float(fields[F_MEMORY_TEMP])

    power_mw = q(dev, "power.draw", lib.nvmlDeviceGetPowerUsage, h)
    limit_mw = q(dev, "power.limit", lib.nvmlDeviceGetEnforcedPowerLimit, h)
    energy_mj = fields.get(F_ENERGY)

    clocks = {}
    for domain, clock, key in _CLOCK_KEYS:
        mhz = q(dev, key, lib.nvmlDeviceGetClockInfo, h, clock)
        if mhz is not None:
            clocks[domain] = mhz * 1e6

    current = q.first(dev, "throttle.current", [
        ("nvmlDeviceGetCurrentClocksEventReasons", (h,)),
        ("nvmlDeviceGetCurrentClocksThrottleReasons", (h,)),
    ])
    supported = _reasons(s.get("throttle_supported")) if current is not None else frozenset()

    gen = q(dev, "pcie.gen", lib.nvmlDeviceGetCurrPcieLinkGeneration, h)
    width = q(dev, "pcie.width", lib.nvmlDeviceGetCurrPcieLinkWidth, h)

    util = {}
    rates = q(dev, "utilization", lib.nvmlDeviceGetUtilizationRates, h)
    if rates is not None:
        util["gpu"] = rates.gpu / 100.0
        util["memory"] = rates.memory / 100.0
    value = q(dev, "utilization.encoder", lib.nvmlDeviceGetEncoderUtilization, h)
    if value is not None:
        util["encoder"] = value[0] / 100.0
    value = q(dev, "utilization.decoder", lib.nvmlDeviceGetDecoderUtilization, h)
    if value is not None:
        util["decoder"] = value[0] / 100.0

    pstate = q(dev, "pstate", lib.nvmlDeviceGetPerformanceState, h)
    mode = q(dev, "compute_mode", lib.nvmlDeviceGetComputeMode, h)
    gpm = read_gpm(session, dev, q) if gpm_enabled else None
    tx, rx = _pcie_bytes(dev, fields, wide, gpm)

    def flag(fid: int) -> bool | None:
        return bool(fields[fid]) if fid in fields else None

    def count(fid: int) -> int | None:
        """A counter field as read: NVML reports these as integers (uint or ull)."""
        return cast("int | None", fields.get(fid))

    fans = {}
    for fan in range(s.get("fans", 0)):
        # percent of the fan's maximum; NVML says it may exceed 100
        speed = within(q(dev, f"fan.{fan}", lib.nvmlDeviceGetFanSpeed_v2, h, fan), 0, 200)
        if speed is not None:
            fans[str(fan)] = speed / 100.0
    action = count(F_RECOVERY_ACTION)

    ecc_enabled = flag(F_ECC_CURRENT)
    ecc = {f: count(f) for f in (F_ECC_SBE_VOL, F_ECC_DBE_VOL, F_ECC_SBE_AGG,
                                 F_ECC_DBE_AGG)}
    if ecc_enabled is False:
        ecc = dict.fromkeys(ecc)  # counts are meaningless with ECC off

    return DeviceSample(
        identity=dev.identity,
        up=True,
        memory=Memory(
            total_bytes=getattr(mem, "total", None),
            used_bytes=getattr(mem, "used", None),
            free_bytes=getattr(mem, "free", None),
            reserved_bytes=getattr(mem, "reserved", None),
            bar1_total_bytes=getattr(bar1, "bar1Total", None),
            bar1_used_bytes=getattr(bar1, "bar1Used", None),
        ),
        thermal=Thermal(temperatures=temps, thresholds=s.get("thresholds", {})),
        power=Power(
            draw_watts=power_mw / 1000.0 if power_mw is not None else None,
            limit_watts=limit_mw / 1000.0 if limit_mw else None,
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            limit_min_watts=s.get("power_limit_min"),
            limit_max_watts=s.get("power_limit_max"),
            limit_default_watts=s.get("power_limit_default"),
        ),
        clocks=Clocks(current=clocks, maximum=s.get("max_clocks", {})),
        throttle=Throttle(
            supported=supported,
            active=_reasons(current) & supported if supported else _reasons(current),
            seconds_total={reason: fields[fid] / 1e9 for reason, fid in THROTTLE_FIELDS.items()
                           if fid in fields},
        ),
        pcie=Pcie(
            generation=gen or None,
            width=width or None,
            max_generation=s.get("max_generation") or None,
            max_width=s.get("max_width") or None,
            tx_bytes_total=tx,
            rx_bytes_total=rx,
            replays_total=count(F_PCIE_REPLAY),
            recoveries_total=count(F_PCIE_RECOVERY),
            naks_received_total=count(F_PCIE_NAKS_RECEIVED),
            naks_sent_total=count(F_PCIE_NAKS_SENT),
            replay_rollovers_total=count(F_PCIE_REPLAY_ROLLOVER),
            errors={kind: int(fields[fid]) for kind, fid in PCIE_ERROR_FIELDS.items()
                    if fid in fields},
        ),
        utilization=util,
        activity=_activity(gpm),
        errors=Errors(
            ecc_enabled=ecc_enabled,
            ecc_corrected_total=ecc[F_ECC_SBE_VOL],
            ecc_uncorrected_total=ecc[F_ECC_DBE_VOL],
            ecc_corrected_lifetime_total=ecc[F_ECC_SBE_AGG],
            ecc_uncorrected_lifetime_total=ecc[F_ECC_DBE_AGG],
            remapped_rows={cause: int(fields[fid]) for cause, fid in
                           (("correctable", F_REMAP_COR), ("uncorrectable", F_REMAP_UNC))
                           if fid in fields},
            remap_pending=flag(F_REMAP_PENDING),
            remap_failed=flag(F_REMAP_FAILURE),
            retired_pages={cause: int(fields[fid]) for cause, fid in
                           (("single_bit", F_RETIRED_SBE), ("double_bit", F_RETIRED_DBE))
                           if fid in fields},
            retired_pages_pending=flag(F_RETIRED_PENDING),
        ),
        performance_state=pstate if pstate is not None and 0 <= pstate <= 15 else None,
        compute_mode=COMPUTE_MODES.get(mode) if mode is not None else None,
        fans=fans,
        interconnect=read_links(session, dev, q,
                                int(within(fields.get(F_NVLINK_COUNT), 0, NVLINK_MAX_LINKS) or 0)),
        recovery=Recovery(
            reset_required=flag(F_RESET_STATUS),
            drain_recommended=flag(F_DRAIN_AND_RESET),
            action=RECOVERY_ACTIONS[action] if action is not None
            and 0 <= action < len(RECOVERY_ACTIONS) else None,
        ),
    )


def _activity(gpm: dict[str, float] | None) -> Activity:
    if not gpm:
        return Activity()
    return Activity(
        graphics_engine=clamp_ratio(gpm.get("graphics_engine")),
        sm_active=clamp_ratio(gpm.get("sm_active")),
        sm_occupancy=clamp_ratio(gpm.get("sm_occupancy")),
        tensor_active=clamp_ratio(gpm.get("tensor_active")),
        dram_active=clamp_ratio(gpm.get("dram_active")),
    )


def _read_mig(session: NvmlSession, dev: NvDevice, q: Query, gpm_enabled: bool
              ) -> DeviceSample:
    """A MIG instance reports its own memory and GPM activity; the rest is the parent's."""
    lib = session.lib
    mem = q(dev, "memory", lib.nvmlDeviceGetMemoryInfo, dev.handle)
    gpm = read_gpm(session, dev, q) if gpm_enabled else None
    return DeviceSample(
        identity=dev.identity,
        up=True,
        memory=Memory(total_bytes=getattr(mem, "total", None),
                      used_bytes=getattr(mem, "used", None),
                      free_bytes=getattr(mem, "free", None)),
        activity=_activity(gpm),
    )


class NvidiaTelemetry(Telemetry[NvmlSession, NvDevice]):
    """Each GPU and each MIG instance is read in its GPU's lane."""

    name = "nvidia"

    def __init__(self, session: NvmlSession, clock: Callable[[], float], gpm: bool) -> None:
        """``clock`` gives the samples' wall-clock time; ``gpm`` reads GPM activity."""
        super().__init__(session, clock)
        self.gpm_enabled = gpm
        self.session.on_shutdown(lambda: free_samples(self.session))

    def units(self) -> list[NvDevice]:
        return self.session.known()

    def read(self, dev: NvDevice, q: Query) -> list[DeviceSample]:
        return [read_device(self.session, dev, q, self.gpm_enabled)]
