"""A simulated amdsmi with the 7.0.2 Python package's surface, over the same world as NVML.

Function names, argument types, dict shapes, units, exception classes and enum values are
those of the real ``amdsmi`` package (``amdsmi_interface.py``, ``amdsmi_exception.py``); the
values come from :class:`~.world.SimWorld`. The real package cannot be imported here (it
needs libamd_smi.so), so its exceptions and enums are mirrored, not reused.

The face reproduces the library's traps, so the backend is tested against them:

* ``'N/A'`` strings where the binding converts a sentinel, raw 65535/4294967295 where it does
  not (``amdsmi_get_power_info`` mem_voltage, ``amdsmi_get_gpu_activity`` on a Radeon);
* mixed units: memory in bytes but ``amdsmi_get_gpu_vram_usage`` in MB, power caps in
  microwatts, PCIe speeds in MT/s and gpu_metrics' in tenths of GT/s, energy in ticks;
* ``throttle_status``/``indep_throttle_status`` flattened to bools in the metrics dict; the
  raw bitmask only through ``amdsmi_wrapper`` (a ctypes struct, as in the real binding);
* partitions as separate handles, the partition in the PCI function, device-wide sensors
  reading 0 on partitions other than 0;
* exited processes still listed for 10 minutes, and the caller's own pid listed as a KFD
  process on MI300-class devices;
* slow calls that really block (violation status 0.1 s, PCIe throughput 1 s);
* no edge sensor on MI300, NOT_SUPPORTED (status 2) for what a device lacks.

Fault injection as in the simulated NVML: ``faults.add("amdsmi_get_power_info", device=0,
error=2)``, ``hang=threading.Event()``; ``library_missing = True``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import Counter
from enum import IntEnum
from types import SimpleNamespace
from typing import Any

from gpuprobe.daemon.core.model import pcie_link_bytes_per_second
from gpuprobe.probes.sim.faults import Face, Faults, api
from gpuprobe.probes.sim.world import SimDevice, SimWorld

MIB = 1024 * 1024
ENERGY_RESOLUTION_UJ = 15.259
STALE_PROCESS_SECONDS = 600.0  # exited processes stay listed this long (pre-PR 7331 bug)
_MTS = {1: 2500, 2: 5000, 3: 8000, 4: 16000, 5: 32000, 6: 64000}
_CDNA = {"cdna2", "cdna3", "cdna4"}
# reasons of the world -> SMU_THROTTLER bit of indep_throttle_status
_THROTTLE_BITS = {"power_cap": 0, "sw_thermal": 33, "hw_thermal": 36, "hw_slowdown": 47}
_STATUS_TEXT = {2: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
                8: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
                9: "AMDSMI_STATUS_RETRY - Retry operation",
                10: "AMDSMI_STATUS_NO_PERM - Permission Denied",
                31: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
                32: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
                34: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded"}


# -- the binding's exceptions and enums (same names, values and hierarchy) ------------------

class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _STATUS_TEXT.get(
            err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_info(self, detailed: bool = True) -> str:
        return self.err_info if detailed else self.err_info.split(" - ")[0]

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(9)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(8)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, receivedValue: Any, expectedType: Any, msg: str | None = None) -> None:
        super().__init__(msg)
        self.err_code = None
        self.actualType = type(receivedValue)
        self.expectedType = expectedType
        self.err_msg = msg if msg is not None else (
            f"Invalid parameter:\nActual type: {self.actualType}\nExpected type: {expectedType}")

    def __str__(self) -> str:
        return str(self.err_msg)


class AmdSmiKeyException(AmdSmiException):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.err_msg = "Key " + key + " is missing from dictionary"

    def __str__(self) -> str:
        return self.err_msg


class AmdSmiBdfFormatException(AmdSmiException):
    def __init__(self, bdf: str) -> None:
        super().__init__()
        self.bdf = bdf

    def __str__(self) -> str:
        return (f"Wrong BDF format: {self.bdf}. \nBDF string should be: "
                "<domain>:<bus>:<device>.<function>\n or <bus>:<device>.<function> in hexcode "
                "format.")


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8
    INIT_AMD_APUS = 3


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2
    HBM_0 = 3
    HBM_1 = 4
    HBM_2 = 5
    HBM_3 = 6
    PLX = 7


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1
    MIN = 2
    MAX_HYST = 3
    MIN_HYST = 4
    CRITICAL = 5
    CRITICAL_HYST = 6
    EMERGENCY = 7
    EMERGENCY_HYST = 8
    CRIT_MIN = 9
    CRIT_MIN_HYST = 10
    OFFSET = 11
    LOWEST = 12
    HIGHEST = 13


class AmdSmiClkType(IntEnum):
    SYS = 0
    GFX = 0
    DF = 1
    DCEF = 2
    SOC = 3
    MEM = 4
    PCIE = 5
    VCLK0 = 6
    VCLK1 = 7
    DCLK0 = 8
    DCLK1 = 9


class AmdSmiMemoryType(IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiGpuBlock(IntEnum):
    INVALID = 0
    UMC = 1
    SDMA = 2
    GFX = 4
    MMHUB = 8
    ATHUB = 16
    PCIE_BIF = 32
    HDP = 64
    XGMI_WAFL = 128
    DF = 256
    SMN = 512
    SEM = 1024
    MP0 = 2048
    MP1 = 4096
    FUSE = 8192
    MCA = 16384
    VCN = 32768
    JPEG = 65536
    IH = 131072
    MPIO = 262144
    RESERVED = 1 << 63


class AmdSmiEvtNotificationType(IntEnum):
    NONE = 0
    VMFAULT = 1
    THERMAL_THROTTLE = 2
    GPU_PRE_RESET = 3
    GPU_POST_RESET = 4
    MIGRATE_START = 5
    MIGRATE_END = 6
    PAGE_FAULT_START = 8  # sic: 7.0.2 binds it to PAGE_FAULT_END's value
    PAGE_FAULT_END = 8
    QUEUE_EVICTION = 9
    QUEUE_RESTORE = 10
    UNMAP_FROM_GPU = 11
    PROCESS_START = 12
    PROCESS_END = 13


class _GpuMetrics(ctypes.Structure):
    """The fields of amdsmi_gpu_metrics_t that the raw path reads (the sim's own layout)."""

    _fields_ = [("throttle_status", ctypes.c_uint32),
                ("indep_throttle_status", ctypes.c_uint64),
                ("accumulation_counter", ctypes.c_uint64)]


# The 79 keys of amdsmi_get_gpu_metrics_info's dict in 7.0.2.
METRIC_KEYS = (
    'common_header.structure_size', 'common_header.format_revision',
    'common_header.content_revision', 'temperature_edge', 'temperature_hotspot',
    'temperature_mem', 'temperature_vrgfx', 'temperature_vrsoc', 'temperature_vrmem',
    'average_gfx_activity', 'average_umc_activity', 'average_mm_activity',
    'average_socket_power', 'energy_accumulator', 'system_clock_counter',
    'average_gfxclk_frequency', 'average_socclk_frequency', 'average_uclk_frequency',
    'average_vclk0_frequency', 'average_dclk0_frequency', 'average_vclk1_frequency',
    'average_dclk1_frequency', 'current_gfxclk', 'current_socclk', 'current_uclk',
    'current_vclk0', 'current_dclk0', 'current_vclk1', 'current_dclk1', 'throttle_status',
    'current_fan_speed', 'pcie_link_width', 'pcie_link_speed', 'gfx_activity_acc',
    'mem_activity_acc', 'temperature_hbm', 'firmware_timestamp', 'voltage_soc', 'voltage_gfx',
    'voltage_mem', 'indep_throttle_status', 'current_socket_power', 'vcn_activity',
    'gfxclk_lock_status', 'xgmi_link_width', 'xgmi_link_speed', 'pcie_bandwidth_acc',
    'pcie_bandwidth_inst', 'pcie_l0_to_recov_count_acc', 'pcie_replay_count_acc',
    'pcie_replay_rover_count_acc', 'xgmi_read_data_acc', 'xgmi_write_data_acc',
    'current_gfxclks', 'current_socclks', 'current_vclk0s', 'current_dclk0s', 'jpeg_activity',
    'pcie_nak_sent_count_acc', 'pcie_nak_rcvd_count_acc', 'accumulation_counter',
    'prochot_residency_acc', 'ppt_residency_acc', 'socket_thm_residency_acc',
    'vr_thm_residency_acc', 'hbm_thm_residency_acc', 'num_partition',
    'xcp_stats.gfx_busy_inst', 'xcp_stats.jpeg_busy', 'xcp_stats.vcn_busy',
    'xcp_stats.gfx_busy_acc', 'xcp_stats.gfx_below_host_limit_acc',
    'xcp_stats.gfx_below_host_limit_ppt_acc', 'xcp_stats.gfx_below_host_limit_thm_acc',
    'xcp_stats.gfx_low_utilization_acc', 'xcp_stats.gfx_below_host_limit_total_acc',
    'pcie_lc_perf_other_end_recovery', 'vram_max_bandwidth', 'xgmi_link_status',
)


def _err(code: int) -> AmdSmiLibraryException:
    if code == 9:
        return AmdSmiRetryException()
    if code == 8:
        return AmdSmiTimeoutException()
    return AmdSmiLibraryException(code)


class _Target:
    """What a handle points at."""

    __slots__ = ("dev", "gen", "index", "init", "partition")

    def __init__(self, dev: SimDevice, index: int, partition: int | None, gen: int,
                 init: int) -> None:
        self.dev, self.index, self.partition, self.gen, self.init = (dev, index, partition,
                                                                     gen, init)


class SimAmdSmi(Face):
    _WITHOUT_INIT = frozenset({"amdsmi_init", "amdsmi_get_rocm_version", "amdsmi_get_lib_version"})
    _NOT_INITIALIZED = 32
    _err = staticmethod(_err)
    __version__ = "7.0.2"
    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiRetryException = AmdSmiRetryException
    AmdSmiTimeoutException = AmdSmiTimeoutException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiKeyException = AmdSmiKeyException
    AmdSmiBdfFormatException = AmdSmiBdfFormatException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiTemperatureType = AmdSmiTemperatureType
    AmdSmiTemperatureMetric = AmdSmiTemperatureMetric
    AmdSmiClkType = AmdSmiClkType
    AmdSmiMemoryType = AmdSmiMemoryType
    AmdSmiGpuBlock = AmdSmiGpuBlock
    AmdSmiEvtNotificationType = AmdSmiEvtNotificationType

    def __init__(self, world: SimWorld) -> None:
        self._world = world
        self._devices = world.vendor_devices("amd")
        self._init_count = 0
        self._init_serial = 0  # handles are invalid after a shutdown
        self._targets: dict[int, _Target] = {}
        self._values: dict[tuple, int] = {}
        self._next_handle = 0x1000
        self._lock = threading.Lock()
        self.faults = Faults()
        self.calls: Counter = Counter()
        self.calls_by_device: Counter = Counter()
        self.library_missing = False
        self.rocm_version = "7.0.2"
        self.violation_latency = 0.1
        self.throughput_latency = 1.0
        self.amdsmi_wrapper = SimpleNamespace(amdsmi_gpu_metrics_t=_GpuMetrics,
                                              amdsmi_get_gpu_metrics_info=self._raw_metrics)
        face = self

        class AmdSmiEventReader:
            """KFD event reader: events after its creation, for its device."""

            def __init__(self, processor_handle: Any, event_types: list[Any]) -> None:
                face._enter("AmdSmiEventReader", (processor_handle,))
                target = face._target(processor_handle)
                if "xid_events" in target.dev.spec.unsupported:
                    raise _err(2)
                self.handle = processor_handle
                self.dev = target.dev
                self.types = {AmdSmiEvtNotificationType(int(t)).name for t in event_types}
                self.since = face._world.now()

            def read(self, timestamp: int, num_elem: int = 10) -> list[dict[str, Any]]:
                end = time.monotonic() + max(0, timestamp) / 1000.0
                while True:
                    face._enter("amdsmi_get_gpu_event_notification", ())
                    now = face._world.now()
                    events = [e for e in face._events(self.dev, self.since, now)
                              if e[1] in self.types][:num_elem]
                    if events:
                        self.since = events[-1][0]
                        return [{"processor_handle": self.handle, "event": kind,
                                 "message": msg} for _, kind, msg in events]
                    if time.monotonic() >= end:
                        self.since = now
                        # amdsmi_get_gpu_event_notification answers AMDSMI_STATUS_NO_DATA
                        # when no event came, and the binding's _check_res raises it
                        raise _err(40)
                    time.sleep(min(0.05, max(0.0, end - time.monotonic())))

            def stop(self) -> None:
                pass

            def __enter__(self) -> AmdSmiEventReader:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.stop()

        self.AmdSmiEventReader = AmdSmiEventReader

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"simulated amdsmi has no {name}")

    # -- plumbing --------------------------------------------------------------------------

    def _missing_error(self, name: str) -> int:
        return 34 if name == "amdsmi_init" else 32

    def _device_of(self, name: str, args: tuple) -> int | None:
        if args and isinstance(args[0], ctypes.c_void_p):
            t = self._targets.get(args[0].value or 0)
            return t.index if t is not None else None
        return None

    def _target(self, handle: Any) -> _Target:
        if not isinstance(handle, ctypes.c_void_p):
            raise AmdSmiParameterException(handle, ctypes.c_void_p)
        target = self._targets.get(handle.value or 0)
        if target is None or target.init != self._init_serial:
            raise _err(32 if target is not None else 31)
        t = self._t()
        if target.dev.lost_at(t) or target.gen != target.dev.generation_at(t):
            raise _err(31)
        return target

    def _device_wide(self, handle: Any, feature: str | None = None) -> tuple[_Target, bool]:
        """The target, and whether its device-wide sensors mean anything (partition 0)."""
        target = self._target(handle)
        if feature is not None and feature in target.dev.spec.unsupported:
            raise _err(2)
        return target, not target.partition

    @staticmethod
    def _enum(value: Any, cls: type) -> Any:
        if not isinstance(value, cls):
            raise AmdSmiParameterException(value, cls)
        return value

    def _cdna(self, dev: SimDevice) -> bool:
        return dev.spec.architecture in _CDNA

    # -- library ---------------------------------------------------------------------------

    @api
    def amdsmi_init(self, flag: Any = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        self._enum(flag, AmdSmiInitFlags)
        self._init_count += 1

    @api
    def amdsmi_shut_down(self) -> None:
        self._init_count = max(0, self._init_count - 1)
        if self._init_count == 0:
            self._init_serial += 1

    @api
    def amdsmi_get_lib_version(self) -> dict[str, Any]:
        return {"major": 26, "minor": 0, "release": 2, "build": "0"}

    @api
    def amdsmi_get_rocm_version(self) -> tuple[bool, str]:
        return True, self.rocm_version

    @api
    def amdsmi_get_processor_handles(self) -> list[ctypes.c_void_p]:
        t = self._t()
        out = []
        with self._lock:
            for index, dev in enumerate(self._devices):
                if dev.lost_at(t):
                    continue
                parts: list[int | None] = (list(range(len(dev.spec.instances)))
                                           if dev.spec.partition and dev.spec.instances
                                           else [None])
                for p in parts:
                    key = (index, p, dev.generation_at(t), self._init_serial)
                    value = self._values.get(key)
                    if value is None:  # a new handle per device incarnation and init
                        value = self._values[key] = self._next_handle
                        self._next_handle += 0x10
                        self._targets[value] = _Target(dev, index, p, key[2], key[3])
                    out.append(ctypes.c_void_p(value))
        return out

    @api
    def amdsmi_get_processor_type(self, handle: Any) -> dict[str, str]:
        self._target(handle)
        return {"processor_type": "AMDSMI_PROCESSOR_TYPE_AMD_GPU"}

    # -- identity ----------------------------------------------------------------------------

    @api
    def amdsmi_get_gpu_device_bdf(self, handle: Any) -> str:
        target = self._target(handle)
        domain, bus, rest = target.dev.pci_bus_id.split(":")
        return f"{int(domain, 16):04x}:{bus.lower()}:{rest[:-1].lower()}{target.partition or 0}"

    @api
    def amdsmi_get_gpu_device_uuid(self, handle: Any) -> str:
        """As the library's uuid_gen(serial, device_id, 0xff): every partition of a GPU
        answers the GPU's UUID, and a part without a serial number (Radeon) one made of its
        device id alone, the same on every card of the model."""
        target = self._target(handle)
        if not self._cdna(target.dev):
            return "00ff7448-0000-1000-8000-000000000000"  # a serial-less W7900 (0x7448)
        return target.dev.uuid

    @api
    def amdsmi_get_gpu_asic_info(self, handle: Any) -> dict[str, Any]:
        target = self._target(handle)
        dev, cdna = target.dev, self._cdna(target.dev)
        parts = max(1, len(dev.spec.instances)) if dev.spec.partition else 1
        serial = int.from_bytes(dev.spec.serial.encode()[-8:], "big")
        return {"market_name": dev.spec.model, "vendor_id": "0x1002",
                "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]", "subvendor_id": "0x1002",
                "device_id": "0x74a1" if cdna else "0x7448", "rev_id": "0x00",
                "asic_serial": f"0x{serial:016X}", "oam_id": target.index if cdna else "N/A",
                "num_compute_units": (304 // parts) if cdna else 96,
                "target_graphics_version": "gfx942" if cdna else "gfx1100",
                "subsystem_id": "0x74a1" if cdna else "0x0e0d"}

    @api
    def amdsmi_get_gpu_driver_info(self, handle: Any) -> dict[str, str]:
        self._target(handle)
        return {"driver_name": "amdgpu", "driver_version": "6.12.12-sim",
                "driver_date": "2015/01/01 00:00"}

    @api
    def amdsmi_get_gpu_vbios_info(self, handle: Any) -> dict[str, str]:
        self._target(handle)
        return {"name": "SIM VBIOS", "build_date": "2025/01/01 00:00",
                "part_number": "113-SIM-000", "version": "022.040.003.043.000001"}

    @api
    def amdsmi_get_gpu_board_info(self, handle: Any) -> dict[str, str]:
        target = self._target(handle)
        cdna = self._cdna(target.dev)
        return {"model_number": "N/A", "product_serial": target.dev.spec.serial if cdna
                else "N/A", "fru_id": "N/A", "product_name": target.dev.spec.model,
                "manufacturer_name": "AMD"}

    @api
    def amdsmi_get_gpu_kfd_info(self, handle: Any) -> dict[str, Any]:
        target = self._target(handle)
        return {"kfd_id": 1000 + target.index, "node_id": target.index + 1,
                "current_partition_id": target.partition or 0}

    @api
    def amdsmi_get_gpu_compute_partition(self, handle: Any) -> str:
        target = self._target(handle)
        if not target.dev.spec.partition:
            raise _err(2)
        return target.dev.spec.partition

    @api
    def amdsmi_get_gpu_memory_partition(self, handle: Any) -> str:
        target = self._target(handle)
        if not self._cdna(target.dev):
            raise _err(2)
        return target.dev.spec.memory_partition  # scenario knob, default NPS1

    @api
    def amdsmi_get_gpu_xcd_counter(self, handle: Any) -> int:
        target = self._target(handle)
        if not self._cdna(target.dev):
            raise _err(2)
        return 8 // max(1, len(target.dev.spec.instances)) if target.partition is not None \
            else 8

    # -- thermal, power, clocks ------------------------------------------------------------

    @api
    def amdsmi_get_temp_metric(self, handle: Any, sensor_type: Any, metric: Any) -> int:
        target, wide = self._device_wide(handle)
        sensor = self._enum(sensor_type, AmdSmiTemperatureType)
        metric = self._enum(metric, AmdSmiTemperatureMetric)
        spec = target.dev.spec
        if sensor == AmdSmiTemperatureType.EDGE and (
                self._cdna(target.dev) or "edge_temperature" in spec.unsupported):
            raise _err(2)
        if sensor not in (AmdSmiTemperatureType.EDGE, AmdSmiTemperatureType.HOTSPOT,
                          AmdSmiTemperatureType.VRAM):
            raise _err(2)
        if not wide:
            return 0
        hot = 8.0 if sensor == AmdSmiTemperatureType.HOTSPOT else 0.0
        if metric == AmdSmiTemperatureMetric.CURRENT:
            s = target.dev.state(self._t())
            base = s.memory_temperature if sensor == AmdSmiTemperatureType.VRAM \
                else s.temperature + hot
            return round(base)
        if sensor == AmdSmiTemperatureType.VRAM:
            limits = {AmdSmiTemperatureMetric.CRITICAL: spec.max_operating_celsius + 10,
                      AmdSmiTemperatureMetric.EMERGENCY: spec.max_operating_celsius + 15}
        else:
            limits = {AmdSmiTemperatureMetric.CRITICAL: spec.slowdown_celsius + hot,
                      AmdSmiTemperatureMetric.EMERGENCY: spec.shutdown_celsius + hot}
        if metric not in limits:
            raise _err(2)
        return int(limits[metric])

    @api
    def amdsmi_get_power_info(self, handle: Any) -> dict[str, Any]:
        target, wide = self._device_wide(handle)
        watts = round(target.dev.state(self._t()).power_watts) if wide else 0
        cdna = self._cdna(target.dev)
        return {"socket_power": watts,
                "current_socket_power": watts if cdna else "N/A",
                "average_socket_power": "N/A" if cdna else watts,
                "gfx_voltage": 850, "soc_voltage": 900,
                "mem_voltage": 1200 if cdna else 0xFFFFFFFF,  # passed through raw by 7.0.2
                "power_limit": int(target.dev.spec.limit_watts)}

    @api
    def amdsmi_get_power_cap_info(self, handle: Any) -> dict[str, int]:
        target, wide = self._device_wide(handle, "power_limit")
        cap = int(target.dev.spec.limit_watts * 1e6) if wide else 0
        return {"power_cap": cap, "default_power_cap": cap, "dpm_cap": 2100,
                "min_power_cap": int(cap * 0.4), "max_power_cap": cap}

    @api
    def amdsmi_get_energy_count(self, handle: Any) -> dict[str, Any]:
        target, wide = self._device_wide(handle, "energy")
        t = self._t()
        joules = target.dev.totals(t)["energy_j"] if wide else 0.0
        return {"energy_accumulator": int(joules / (ENERGY_RESOLUTION_UJ * 1e-6)),
                "counter_resolution": ENERGY_RESOLUTION_UJ, "timestamp": int(t * 1e9)}

    @api
    def amdsmi_get_clock_info(self, handle: Any, clk_type: Any) -> dict[str, Any]:
        target, wide = self._device_wide(handle)
        clk = self._enum(clk_type, AmdSmiClkType)
        s, spec = target.dev.state(self._t()), target.dev.spec
        table = {AmdSmiClkType.GFX: (s.sm_hz / 1e6, spec.sm_max_hz / 1e6),
                 AmdSmiClkType.MEM: (s.memory_hz / 1e6, spec.memory_hz / 1e6),
                 AmdSmiClkType.SOC: (1143, 1143),
                 AmdSmiClkType.VCLK0: (1620 if s.utilization > 0 else 29, 1620)}
        if clk not in table:
            raise _err(2)
        current, maximum = table[clk]
        return {"clk": int(current) if wide else 0, "min_clk": 100,
                "max_clk": int(maximum), "clk_locked": False, "clk_deep_sleep": "N/A"}

    # -- activity and metrics ----------------------------------------------------------------

    def _util(self, target: _Target, t: float) -> float:
        s = target.dev.state(t)
        if target.partition is not None:
            return s.instance_utilization[target.partition]
        return s.utilization

    @api
    def amdsmi_get_gpu_activity(self, handle: Any) -> dict[str, Any]:
        target = self._target(handle)
        if "utilization" in target.dev.spec.unsupported:
            raise _err(2)
        util = self._util(target, self._t())
        cdna = self._cdna(target.dev)
        return {"gfx_activity": round(util * 100),
                "umc_activity": round(util * 45) if cdna else "N/A",
                "mm_activity": 0 if cdna else 0xFFFFFFFF}  # raw UINT32_MAX: not converted

    def _xcc_rows(self, target: _Target, t: float) -> list[list[Any]]:
        rows: list[list[Any]] = [["N/A"] * 8 for _ in range(8)]
        if not self._cdna(target.dev):
            return rows
        dev = target.dev
        parts = len(dev.spec.instances) if dev.spec.partition and dev.spec.instances else 1
        per = 8 // parts
        s = dev.state(t)
        for p in range(parts):
            util = s.instance_utilization[p] if parts > 1 else s.utilization
            for x in range(per):
                spread = ((x * 7 + p * 3) % 5 - 2) * 0.01  # a small, fixed per-XCC spread
                rows[p][x] = round(max(0.0, min(1.0, util + spread if util else 0)) * 100)
        return rows

    def _residency(self, dev: SimDevice, t: float) -> dict[str, Any]:
        if not self._cdna(dev) or "violation_status" in dev.spec.unsupported:
            return dict.fromkeys(("accumulation_counter", "prochot_residency_acc",
                                  "ppt_residency_acc", "socket_thm_residency_acc",
                                  "vr_thm_residency_acc", "hbm_thm_residency_acc"), "N/A")
        tot = dev.totals(t)
        return {"accumulation_counter": int(t * 1000),
                "prochot_residency_acc": int(tot["thr_hw_slowdown"] * 1000),
                "ppt_residency_acc": int(tot["thr_power_cap"] * 1000),
                "socket_thm_residency_acc": int(tot["thr_sw_thermal"] * 1000),
                "vr_thm_residency_acc": 0, "hbm_thm_residency_acc": 0}

    @api
    def amdsmi_get_gpu_metrics_info(self, handle: Any) -> dict[str, Any]:
        target = self._target(handle)
        t = self._t()
        dev, cdna = target.dev, self._cdna(target.dev)
        s = dev.state(t)
        out: dict[str, Any] = dict.fromkeys(METRIC_KEYS, "N/A")
        util = self._util(target, t)
        replays = dev.replays(t) if "pcie_counters" not in dev.spec.unsupported else None
        out.update({
            "common_header.structure_size": 1256, "common_header.format_revision": 1,
            "common_header.content_revision": 6 if cdna else 3,
            "temperature_edge": "N/A" if cdna else int(s.temperature),
            "temperature_hotspot": int(s.temperature + 8),
            "temperature_mem": int(s.memory_temperature),
            "average_gfx_activity": int(util * 100),
            "average_umc_activity": int(util * 45) if cdna else "N/A",
            "energy_accumulator": int(dev.totals(t)["energy_j"] / (ENERGY_RESOLUTION_UJ * 1e-6)),
            "system_clock_counter": int(t * 1e9),
            "current_gfxclk": int(s.sm_hz / 1e6), "current_uclk": int(s.memory_hz / 1e6),
            "throttle_status": bool(s.throttle - {"gpu_idle"}),
            "indep_throttle_status": bool(s.throttle - {"gpu_idle"}),
            "current_fan_speed": "N/A" if cdna else int(900 + 1500 * util),
            "pcie_link_width": s.width, "pcie_link_speed": _MTS[s.generation] // 100,
            "num_partition": max(1, len(dev.spec.instances)) if dev.spec.partition else 1,
            "xcp_stats.gfx_busy_inst": self._xcc_rows(target, t),
        })
        if cdna:
            out["current_socket_power"] = int(s.power_watts)
        else:
            out["average_socket_power"] = int(s.power_watts)
        if replays is not None and cdna:
            out.update({"pcie_replay_count_acc": replays,
                        "pcie_l0_to_recov_count_acc": replays // 10,
                        "pcie_nak_sent_count_acc": replays // 4,
                        "pcie_nak_rcvd_count_acc": replays // 5})
        out.update(self._residency(dev, t))
        return out

    def _raw_metrics(self, handle: Any, pointer: Any) -> int:
        """amdsmi_wrapper.amdsmi_get_gpu_metrics_info: fills the struct, returns a status."""
        try:
            self._enter("amdsmi_wrapper.amdsmi_get_gpu_metrics_info", (handle,))
            target = self._target(handle)
        except AmdSmiLibraryException as e:
            return e.err_code
        s = target.dev.state(self._t())
        mask = 0
        for reason, bit in _THROTTLE_BITS.items():
            if reason in s.throttle:
                mask |= 1 << bit
        struct = ctypes.cast(pointer, ctypes.POINTER(_GpuMetrics)).contents \
            if not isinstance(pointer, _GpuMetrics) else pointer
        # MI300's SMU never fills indep_throttle_status: it reads all ones there (the
        # 64-bit "no value"), and throttling shows only in the residency accumulators
        struct.indep_throttle_status = 2**64 - 1 if target.dev.spec.architecture == "cdna3" \
            else mask
        struct.throttle_status = 1 if mask else 0
        struct.accumulation_counter = int(self._t() * 1000)
        return 0

    # -- memory ------------------------------------------------------------------------------

    def _vram(self, target: _Target, t: float) -> tuple[int, int]:
        dev = target.dev
        s = dev.state(t)
        if target.partition is not None:  # own share or the whole pool: world.py decides
            return dev.partition_memory(t, target.partition)
        return int(dev.spec.memory), int(min(dev.spec.memory, s.used + dev.spec.reserved))

    def _memory(self, handle: Any, mem_type: Any) -> tuple[int, int]:
        target = self._target(handle)
        kind = self._enum(mem_type, AmdSmiMemoryType)
        t = self._t()
        total, used = self._vram(target, t)
        if kind == AmdSmiMemoryType.VRAM:
            return total, used
        if kind == AmdSmiMemoryType.VIS_VRAM:
            vis = total if self._cdna(target.dev) else 256 * MIB
            return vis, int(min(vis, 0.01 * used + 16 * MIB))
        if "gtt" in target.dev.spec.unsupported:
            raise _err(2)
        return 256 * 1024 * MIB, int(0.02 * used + 64 * MIB)

    @api
    def amdsmi_get_gpu_memory_total(self, handle: Any, mem_type: Any) -> int:
        return self._memory(handle, mem_type)[0]

    @api
    def amdsmi_get_gpu_memory_usage(self, handle: Any, mem_type: Any) -> int:
        return self._memory(handle, mem_type)[1]

    @api
    def amdsmi_get_gpu_vram_usage(self, handle: Any) -> dict[str, int]:
        total, used = self._vram(self._target(handle), self._t())
        return {"vram_total": total // MIB, "vram_used": used // MIB}

    @api
    def amdsmi_get_gpu_vram_info(self, handle: Any) -> dict[str, Any]:
        target = self._target(handle)
        return {"vram_type": 5 if self._cdna(target.dev) else 7, "vram_vendor": "SAMSUNG",
                "vram_size": int(self._vram(target, self._t())[0] // MIB),
                "vram_bit_width": 8192 if self._cdna(target.dev) else 384,
                "vram_max_bandwidth": 5300 if self._cdna(target.dev) else 864}

    # -- PCIe ------------------------------------------------------------------------------

    @api
    def amdsmi_get_pcie_info(self, handle: Any) -> dict[str, Any]:
        target, wide = self._device_wide(handle)
        dev, t = target.dev, self._t()
        s, spec = dev.state(t), dev.spec
        counters = "pcie_counters" not in spec.unsupported
        replays = dev.replays(t) if counters and wide else 0

        def count(v: int) -> Any:
            return v if counters else "N/A"

        return {"pcie_static": {"max_pcie_width": spec.max_width,
                                "max_pcie_speed": _MTS[spec.max_generation],
                                "pcie_interface_version": spec.max_generation,
                                "slot_type": "OAM" if self._cdna(dev) else "CEM"},
                "pcie_metric": {"pcie_width": s.width if wide else 0,
                                "pcie_speed": _MTS[s.generation] if wide else 0,
                                "pcie_bandwidth": "N/A",
                                "pcie_replay_count": count(replays),
                                "pcie_l0_to_recovery_count": count(replays // 10),
                                "pcie_replay_roll_over_count": count(0),
                                "pcie_nak_sent_count": count(replays // 4),
                                "pcie_nak_received_count": count(replays // 5),
                                "pcie_lc_perf_other_end_recovery_count": count(0)}}

    @api
    def amdsmi_get_gpu_pci_throughput(self, handle: Any) -> dict[str, int]:
        target, wide = self._device_wide(handle, "pcie_throughput")
        time.sleep(self.throughput_latency)  # the driver's pcie_bw sleeps a second
        s = target.dev.state(self._t())
        link = pcie_link_bytes_per_second(s.generation, s.width) or 0.0
        return {"sent": int(s.utilization * 0.10 * link) if wide else 0,
                "received": int(s.utilization * 0.18 * link) if wide else 0,
                "max_pkt_sz": 256}

    @api
    def amdsmi_get_violation_status(self, handle: Any) -> dict[str, Any]:
        target, _ = self._device_wide(handle, "violation_status")
        if not self._cdna(target.dev):
            raise _err(2)
        time.sleep(self.violation_latency)  # two firmware samples 100 ms apart
        t = self._t()
        r = self._residency(target.dev, t)
        throttle = target.dev.state(t).throttle
        out: dict[str, Any] = {"reference_timestamp": int(time.time() * 1e6),
                               "violation_timestamp": int(t * 1e9),
                               "acc_counter": r["accumulation_counter"]}
        for name, key, reason in (("prochot_thrm", "prochot_residency_acc", "hw_slowdown"),
                                  ("ppt_pwr", "ppt_residency_acc", "power_cap"),
                                  ("socket_thrm", "socket_thm_residency_acc", "sw_thermal"),
                                  ("vr_thrm", "vr_thm_residency_acc", None),
                                  ("hbm_thrm", "hbm_thm_residency_acc", None)):
            active = reason is not None and reason in throttle
            out[f"acc_{name}"] = r[key]
            out[f"per_{name}"] = 100 if active else 0
            out[f"active_{name}"] = active
        return out

    # -- processes -----------------------------------------------------------------------------

    @api
    def amdsmi_get_gpu_process_list(self, handle: Any) -> list[dict[str, Any]]:
        target = self._target(handle)
        t = self._t()
        dev = target.dev
        self._world.sync_processes(t)
        listed = [(p, t) for p in dev.state(t).processes]
        alive = {p.pid for p, _ in listed}
        # 7.0.2 kept exited processes in the list (fixed later upstream)
        local = dev._cycle(t)[1]
        for spec in dev.spec.processes:
            if spec.end is not None and spec.end <= local < spec.end + STALE_PROCESS_SECONDS:
                last = t - (local - spec.end) - 1e-3  # as it was just before it exited
                listed += [(q, last) for q in dev.processes_at(last)
                           if q.spec is spec and q.pid not in alive]
        engine = "process_engine_time" not in dev.spec.unsupported
        out = []
        for p, seen in listed:  # seen: when its counters stopped (now, or when it exited)
            if dev.spec.partition and dev.spec.instances and p.spec.instance != target.partition:
                continue
            if p.memory <= 0:
                continue
            vram, gtt = int(p.memory), 2 * MIB
            out.append({"name": p.spec.name[:15], "pid": p.pid, "mem": vram + gtt,
                        "engine_usage": {"gfx": int(p.utilization * max(0.0, seen - p.started)
                                                    * 1e9) if engine else 0, "enc": 0},
                        "memory_usage": {"gtt_mem": gtt, "cpu_mem": 0, "vram_mem": vram},
                        "cu_occupancy": int(p.utilization * 38) if self._cdna(dev) else "N/A"})
        if self._cdna(dev):  # the caller opened /dev/kfd: listed as a KFD process
            out.append({"name": "python3", "pid": os.getpid(), "mem": 0,
                        "engine_usage": {"gfx": 0, "enc": 0},
                        "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": 0},
                        "cu_occupancy": 0})
        return out

    # -- errors ------------------------------------------------------------------------------

    def _ecc_device(self, handle: Any) -> tuple[_Target, bool]:
        target, wide = self._device_wide(handle, "ecc")
        if not target.dev.spec.ecc or not self._cdna(target.dev):
            raise _err(2)
        return target, wide

    @api
    def amdsmi_get_gpu_ecc_enabled(self, handle: Any) -> int:
        self._ecc_device(handle)
        return int(AmdSmiGpuBlock.UMC | AmdSmiGpuBlock.SDMA | AmdSmiGpuBlock.GFX
                   | AmdSmiGpuBlock.MMHUB | AmdSmiGpuBlock.XGMI_WAFL)

    @api
    def amdsmi_get_gpu_total_ecc_count(self, handle: Any) -> dict[str, int]:
        target, wide = self._ecc_device(handle)
        corrected, uncorrected = target.dev.ecc(self._t()) if wide else (0, 0)
        return {"correctable_count": corrected, "uncorrectable_count": uncorrected,
                "deferred_count": 0}

    @api
    def amdsmi_get_gpu_ecc_count(self, handle: Any, block: Any) -> dict[str, int]:
        target, wide = self._ecc_device(handle)
        block = self._enum(block, AmdSmiGpuBlock)
        corrected, uncorrected = target.dev.ecc(self._t()) if wide else (0, 0)
        umc = block == AmdSmiGpuBlock.UMC
        return {"correctable_count": corrected if umc else 0,
                "uncorrectable_count": uncorrected if umc else 0, "deferred_count": 0}

    @api
    def amdsmi_get_gpu_bad_page_info(self, handle: Any) -> list[dict[str, Any]]:
        target, _ = self._device_wide(handle, "remapped_rows")
        if not self._cdna(target.dev):
            raise _err(2)
        _, unc, pending = target.dev.remapped_rows(self._t())
        pages = [{"value": i, "page_address": 0x10000 * (i + 1), "page_size": 4096,
                  "status": 0} for i in range(unc)]
        if pending:
            pages.append({"value": len(pages), "page_address": 0xF0000, "page_size": 4096,
                          "status": 1})
        return pages

    @api
    def amdsmi_get_gpu_bad_page_threshold(self, handle: Any) -> int:
        self._device_wide(handle, "remapped_rows")
        return 128

    # -- events ------------------------------------------------------------------------------

    def _events(self, dev: SimDevice, t0: float, t1: float) -> list[tuple[float, str, str]]:
        """(time, kind, message) of the scenario's events in (t0, t1], over cycles."""
        out = []
        length = dev.duration or 0.0
        k0 = int(max(t0, 0.0) // length) if length else 0
        k1 = int(t1 // length) if length else 0
        for k in range(k0, k1 + 1):
            base = k * length
            for e in dev.spec.events:
                if e.kind == "thermal_throttle":
                    out.append((base + e.at, "THERMAL_THROTTLE", "0x00000010:0x00000001"))
                elif e.kind == "fall_off_bus":
                    out.append((base + e.at, "GPU_PRE_RESET", "1 sim-reset"))
                    out.append((base + e.at + e.duration, "GPU_POST_RESET", "1 sim-reset"))
        return sorted(e for e in out if t0 < e[0] <= t1)
