"""A simulated NVML with pynvml's surface: function names, structures, constants, errors.

The real NVIDIA backend runs against it unchanged. Constants, ctypes structures and the
``NVMLError_*`` classes are pynvml's own; functions are answered from a :class:`SimWorld`.
A function this face does not implement is missing (AttributeError), as in an older pynvml,
which the backend treats as unsupported.

Fault injection for tests: ``faults.add("nvmlDeviceGetPowerUsage", device=1, error=3)``
makes that call raise NOT_SUPPORTED on the second NVIDIA GPU; ``hang=threading.Event()``
blocks it until the event is set; ``library_missing = True`` makes the library vanish.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from typing import Any

import pynvml

from gpuprobe.probes.sim.faults import Face, Faults, api
from gpuprobe.probes.sim.world import DeviceState, SimDevice, SimWorld

_INIT_FUNCTIONS = {"nvmlInit", "nvmlInitWithFlags"}
_ARCH_CODES = {"kepler": 2, "maxwell": 3, "pascal": 4, "volta": 5, "turing": 6, "ampere": 7,
               "ada": 8, "hopper": 9, "blackwell": 10}
_COMPUTE_CAPABILITY = {"volta": (7, 0), "turing": (7, 5), "ampere": (8, 0), "ada": (8, 9),
                       "hopper": (9, 0), "blackwell": (10, 0)}
_GPM_ARCHES = {"hopper", "blackwell"}
_HBM_ARCHES = {"volta", "ampere", "hopper", "blackwell"}
_THROTTLE_BITS = {"gpu_idle": 0x1, "applications_clocks": 0x2, "power_cap": 0x4,
                  "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal": 0x20,
                  "hw_thermal": 0x40, "hw_power_brake": 0x80, "display_clocks": 0x100}
LIFETIME_CORRECTED = 12  # aggregate ECC counts from before the simulated driver load
MIB = 1024 * 1024


class _Handle:
    __slots__ = ("dev", "gen", "instance")

    def __init__(self, dev: SimDevice, gen: int, instance: int | None = None) -> None:
        self.dev, self.gen, self.instance = dev, gen, instance

    def __repr__(self) -> str:
        suffix = "" if self.instance is None else f"/{self.instance}"
        return f"<sim nvmlDevice {self.dev.index}{suffix}>"


class _EventSet:
    def __init__(self) -> None:
        # device index -> [handle, registration time, events delivered since then]
        self.registered: dict[int, list] = {}


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class SimNvml(Face):
    _WITHOUT_INIT = frozenset(_INIT_FUNCTIONS)
    _NOT_INITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    _err = staticmethod(_err)

    def __init__(self, world: SimWorld) -> None:
        self._world = world
        self._devices = world.vendor_devices("nvidia")
        self._index = {id(d): i for i, d in enumerate(self._devices)}
        self._init_count = 0
        # sample buffer address -> (buffer, its reading: (device id, instance, t, totals,
        # wall time) once taken); looked up by a sample's address, None for a null pointer.
        self._gpm: dict[int | None,
                        tuple[Any, tuple[int, int | None, float, dict, float] | None]] = {}
        self._lock = threading.Lock()
        self.faults = Faults()
        self.calls: Counter = Counter()
        self.calls_by_device: Counter = Counter()  # (function, NVIDIA index or None)
        self.library_missing = False

    def __getattr__(self, name: str) -> Any:
        # Constants, structures and error classes are pynvml's; its functions are not ours.
        value = getattr(pynvml, name)
        if name.startswith("nvml") and callable(value) and not isinstance(value, type):
            raise AttributeError(f"simulated NVML has no {name}")
        return value

    # -- plumbing --------------------------------------------------------------------------------

    def _missing_error(self, name: str) -> int:
        return (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND if name in _INIT_FUNCTIONS
                else pynvml.NVML_ERROR_UNINITIALIZED)

    def _device_of(self, name: str, args: tuple) -> int | None:
        if args and isinstance(args[0], _Handle):
            return self._index.get(id(args[0].dev))
        if name == "nvmlDeviceGetHandleByIndex" and args:
            return args[0]
        return None

    def _dev(self, handle: Any, t: float, mig_ok: bool = False) -> SimDevice:
        if not isinstance(handle, _Handle):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = handle.dev
        if dev.lost_at(t) or handle.gen != dev.generation_at(t):
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if handle.instance is not None and not mig_ok:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev

    def _state(self, handle: Any) -> DeviceState:
        """What the GPU behind ``handle`` reads now."""
        t = self._t()
        return self._dev(handle, t).state(t)

    def _supports(self, dev: SimDevice, feature: str) -> None:
        if feature in dev.spec.unsupported:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # -- library -----------------------------------------------------------------------------------

    @api
    def nvmlInit(self) -> None:
        self._init_count += 1

    @api
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._init_count += 1

    @api
    def nvmlShutdown(self) -> None:
        self._init_count = max(0, self._init_count - 1)

    @api
    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95.05-sim"

    @api
    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.95.05-sim"

    @api
    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    # -- enumeration and identity ----------------------------------------------------------------

    @api
    def nvmlDeviceGetCount(self) -> int:
        return len(self._devices)

    @api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self._devices):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev, t = self._devices[index], self._t()
        if dev.lost_at(t):
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        return _Handle(dev, dev.generation_at(t))

    @api
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:
        t = self._t()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for dev in self._devices:
            if uuid == dev.uuid or uuid in dev.instance_uuids:
                if dev.lost_at(t):
                    raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
                instance = dev.instance_uuids.index(uuid) if uuid != dev.uuid else None
                return _Handle(dev, dev.generation_at(t), instance)
        raise _err(pynvml.NVML_ERROR_NOT_FOUND)

    @api
    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        dev = self._dev(handle, self._t(), mig_ok=True)
        return dev.uuid if handle.instance is None else dev.instance_uuids[handle.instance]

    @api
    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        dev = self._dev(handle, self._t(), mig_ok=True)
        if handle.instance is None:
            return dev.spec.model
        return f"{dev.spec.model} MIG {dev.spec.instances[handle.instance].profile}"

    @api
    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return self._index[id(self._dev(handle, self._t()))]

    @api
    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> Any:
        dev = self._dev(handle, self._t())
        info = pynvml.nvmlPciInfo_t()
        info.busId = dev.pci_bus_id.encode()
        info.busIdLegacy = dev.pci_bus_id[4:].encode()
        info.pciDeviceId = 0x233010DE
        return info

    @api
    def nvmlDeviceGetSerial(self, handle: _Handle) -> str:
        return self._dev(handle, self._t()).spec.serial

    @api
    def nvmlDeviceGetVbiosVersion(self, handle: _Handle) -> str:
        self._dev(handle, self._t())
        return "96.00.99.00.01"

    @api
    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        dev = self._dev(handle, self._t())
        return _COMPUTE_CAPABILITY.get(dev.spec.architecture, (9, 0))

    @api
    def nvmlDeviceGetArchitecture(self, handle: _Handle) -> int:
        return _ARCH_CODES.get(self._dev(handle, self._t()).spec.architecture, 0xFFFFFFFF)

    @api
    def nvmlDeviceGetComputeMode(self, handle: _Handle) -> int:
        mode = self._dev(handle, self._t()).spec.compute_mode
        return {"default": pynvml.NVML_COMPUTEMODE_DEFAULT,
                "exclusive_process": pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
                "prohibited": pynvml.NVML_COMPUTEMODE_PROHIBITED}[mode]

    # -- MIG -------------------------------------------------------------------------------------

    @api
    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        dev = self._dev(handle, self._t())
        if dev.spec.architecture not in ("ampere", "hopper", "blackwell"):
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = 1 if dev.spec.instances else 0
        return [mode, mode]

    @api
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        return 7 if self._dev(handle, self._t()).spec.instances else 0

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        dev = self._dev(handle, self._t())
        if not 0 <= index < len(dev.spec.instances):
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(dev, handle.gen, index)

    @api
    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._dev(handle, self._t(), mig_ok=True)
        if handle.instance is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.instance + 1

    # -- memory ----------------------------------------------------------------------------------

    @api
    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        t = self._t()
        dev = self._dev(handle, t, mig_ok=True)
        st = dev.state(t)
        if handle.instance is not None:
            total = dev.spec.instances[handle.instance].memory
            used, reserved = st.instance_used[handle.instance], 0.0
        else:
            total, used, reserved = dev.spec.memory, st.used, dev.spec.reserved
        if version:
            m = pynvml.c_nvmlMemory_v2_t()
            m.version, m.total, m.reserved = version, int(total), int(reserved)
            m.used = int(used)
            m.free = int(total - reserved - used)
            return m
        m = pynvml.c_nvmlMemory_t()
        m.total, m.used = int(total), int(used + reserved)
        m.free = int(total - used - reserved)
        return m

    @api
    def nvmlDeviceGetBAR1MemoryInfo(self, handle: _Handle) -> Any:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "bar1")
        b = pynvml.c_nvmlBAR1Memory_t()
        b.bar1Total = 128 * 1024 * MIB if dev.spec.architecture == "hopper" else 64 * 1024 * MIB
        b.bar1Used = int(2 * MIB + dev.state(t).used * 0.001)
        b.bar1Free = b.bar1Total - b.bar1Used
        return b

    # -- thermal, power, clocks -----------------------------------------------------------------

    @api
    def nvmlDeviceGetTemperatureV(self, handle: _Handle, sensor: int,
                                  version: int = pynvml.nvmlTemperature_v1) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return round(self._state(handle).temperature)

    @api
    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return round(self._state(handle).temperature)

    @api
    def nvmlDeviceGetTemperatureThreshold(self, handle: _Handle, threshold: int) -> int:
        spec = self._dev(handle, self._t()).spec
        values = {pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: spec.shutdown_celsius,
                  pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: spec.slowdown_celsius,
                  pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: spec.max_operating_celsius}
        if spec.architecture in _HBM_ARCHES and "memory_temperature" not in spec.unsupported:
            values[pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX] = 95.0
        if threshold not in values:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(values[threshold])

    @api
    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return int(self._state(handle).power_watts * 1000)

    @api
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        dev = self._dev(handle, self._t())
        self._supports(dev, "power_limit")
        return int(dev.spec.limit_watts * 1000)

    @api
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "energy")
        return int(dev.totals(t)["energy_j"] * 1000)

    @api
    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:
        st = self._state(handle)
        hz = {pynvml.NVML_CLOCK_GRAPHICS: st.sm_hz, pynvml.NVML_CLOCK_SM: st.sm_hz,
              pynvml.NVML_CLOCK_MEM: st.memory_hz, pynvml.NVML_CLOCK_VIDEO: st.sm_hz * 0.85}
        return int(hz[clock] / 1e6)

    @api
    def nvmlDeviceGetMaxClockInfo(self, handle: _Handle, clock: int) -> int:
        spec = self._dev(handle, self._t()).spec
        hz = {pynvml.NVML_CLOCK_GRAPHICS: spec.sm_max_hz, pynvml.NVML_CLOCK_SM: spec.sm_max_hz,
              pynvml.NVML_CLOCK_MEM: spec.memory_hz, pynvml.NVML_CLOCK_VIDEO: spec.sm_max_hz * 0.85}
        return int(hz[clock] / 1e6)

    @api
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        mask = 0
        for reason in self._state(handle).throttle:
            mask |= _THROTTLE_BITS[reason]
        return mask

    @api
    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: _Handle) -> int:
        self._dev(handle, self._t())
        return 0x1FF  # as the H100 answers (docs/hardware/), display clocks included

    @api
    def nvmlDeviceGetPerformanceState(self, handle: _Handle) -> int:
        return self._state(handle).pstate

    # -- PCIe ------------------------------------------------------------------------------------

    @api
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: _Handle) -> int:
        return self._state(handle).generation

    @api
    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: _Handle) -> int:
        return self._state(handle).width

    @api
    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: _Handle) -> int:
        return self._dev(handle, self._t()).spec.max_generation

    @api
    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: _Handle) -> int:
        return self._dev(handle, self._t()).spec.max_width

    # -- utilization -----------------------------------------------------------------------------

    @api
    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "utilization")
        if dev.spec.instances:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on a MIG-enabled GPU
        u = pynvml.c_nvmlUtilization_t()
        util = dev.state(t).utilization
        u.gpu, u.memory = round(util * 100), round(util * 45)
        return u

    def _codec_utilization(self, handle: _Handle) -> list[int]:
        """The encoder's or decoder's: idle, over a sampling period of 167 ms."""
        dev = self._dev(handle, self._t())
        self._supports(dev, "encoder")
        if dev.spec.instances:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [0, 167000]

    @api
    def nvmlDeviceGetEncoderUtilization(self, handle: _Handle) -> list[int]:
        return self._codec_utilization(handle)

    @api
    def nvmlDeviceGetDecoderUtilization(self, handle: _Handle) -> list[int]:
        return self._codec_utilization(handle)

    # -- field values ----------------------------------------------------------------------------

    def _field(self, dev: SimDevice, t: float, fid: int) -> tuple[int, float] | None:
        """(valueType, value) of a field, or None when the device does not have it."""
        spec, arch = dev.spec, dev.spec.architecture
        u = spec.unsupported
        ull, uint = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        ecc_ok = spec.ecc and "ecc" not in u
        if fid == pynvml.NVML_FI_DEV_ECC_CURRENT and "ecc" not in u:
            return ull, 1 if spec.ecc else 0  # unsigned long long, as the H100 answers
        if fid in (3, 4, 5, 6) and ecc_ok:
            corrected, uncorrected = dev.ecc(t)
            lifetime = LIFETIME_CORRECTED if fid == 5 else 0
            return ull, (corrected if fid in (3, 5) else uncorrected) + lifetime
        if fid in (29, 30, 31) and ecc_ok and arch in ("volta", "turing"):
            return uint, 0
        throttle = {74: "thr_power_cap", 76: None, 269: "thr_sw_thermal", 270: "thr_hw_thermal",
                    271: None}
        if fid in throttle and "throttle_counters" not in u:
            key = throttle[fid]
            return ull, int(dev.totals(t)[key] * 1e9) if key else 0
        if fid == pynvml.NVML_FI_DEV_MEMORY_TEMP and arch in _HBM_ARCHES \
                and "memory_temperature" not in u:
            return uint, round(dev.state(t).memory_temperature)
        if fid == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION and "energy" not in u:
            return ull, int(dev.totals(t)["energy_j"] * 1000)
        if fid == pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER:
            return uint, dev.replays(t)
        if fid in (142, 143, 144, 145) and ecc_ok and arch not in ("volta", "turing") \
                and "remapped_rows" not in u:
            cor, unc, pending = dev.remapped_rows(t)
            return ull, {142: cor, 143: unc, 144: int(pending), 145: 0}[fid]
        if fid == 169:
            return uint, dev.replays(t) // 8
        if fid in (174, 177):
            return uint, dev.replays(t) // (2 if fid == 174 else 3)
        if fid in (197, 198) and "pcie_counters" not in u:
            # 32 bits wide, wrapping, as on the H100 (driver 580) we measured
            return uint, int(dev.totals(t)["pcie_tx" if fid == 197 else "pcie_rx"]) % 2**32
        return None

    @api
    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: list) -> Any:
        t = self._t()
        dev = self._dev(handle, t)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        now_us = int(time.time() * 1e6)
        for i, fid in enumerate(field_ids):
            fid, scope = fid if isinstance(fid, tuple) else (fid, 0)
            v = values[i]
            v.fieldId, v.scopeId, v.timestamp, v.latencyUsec = fid, scope, now_us, 1
            got = self._field(dev, t, fid)
            if got is None:
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            vtype, value = got
            v.valueType, v.nvmlReturn = vtype, pynvml.NVML_SUCCESS
            if vtype == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
                v.value.ullVal = int(value)
            else:
                v.value.uiVal = int(value)
        return values

    # -- processes -------------------------------------------------------------------------------

    def _processes(self, handle: _Handle) -> list[Any]:
        t = self._t()
        dev = self._dev(handle, t, mig_ok=True)
        self._world.sync_processes(t)
        out = []
        for p in dev.state(t).processes:
            inst = p.spec.instance if dev.spec.instances else None
            if handle.instance is not None and inst != handle.instance:
                continue
            if p.memory <= 0 and p.spec.memory.free_at is None:
                continue
            gi = 0xFFFFFFFF if inst is None else inst + 1
            out.append(pynvml.nvmlFriendlyObject({
                "pid": p.pid, "usedGpuMemory": int(p.memory),
                "gpuInstanceId": gi, "computeInstanceId": 0 if inst is not None else gi}))
        return out

    @api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        return self._processes(handle)

    @api
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[Any]:
        self._dev(handle, self._t(), mig_ok=True)
        return []

    @api
    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        self._dev(handle, self._t(), mig_ok=True)
        return []

    # -- GPM -------------------------------------------------------------------------------------

    @api
    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> Any:
        dev = self._dev(handle, self._t())
        s = pynvml.c_nvmlGpmSupport_t()
        s.version = pynvml.NVML_GPM_SUPPORT_VERSION
        s.isSupportedDevice = int(dev.spec.architecture in _GPM_ARCHES
                                  and "gpm" not in dev.spec.unsupported)
        return s

    @api
    def nvmlGpmSampleAlloc(self) -> Any:
        buf = ctypes.create_string_buffer(16)
        sample = ctypes.cast(buf, pynvml.c_nvmlGpmSample_t)
        with self._lock:
            self._gpm[ctypes.addressof(buf)] = (buf, None)
        return sample

    @api
    def nvmlGpmSampleFree(self, sample: Any) -> None:
        with self._lock:
            if self._gpm.pop(ctypes.cast(sample, ctypes.c_void_p).value, None) is None:
                raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _take(self, sample: Any, dev: SimDevice, instance: int | None) -> Any:
        t = self._t()
        key = ctypes.cast(sample, ctypes.c_void_p).value
        with self._lock:
            if key not in self._gpm:
                raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            buf = self._gpm[key][0]
            self._gpm[key] = (buf, (id(dev), instance, t, dev.totals(t, instance),
                                    time.monotonic()))
        return sample

    @api
    def nvmlGpmSampleGet(self, handle: _Handle, sample: Any) -> Any:
        dev = self._dev(handle, self._t())
        if dev.spec.architecture not in _GPM_ARCHES or "gpm" in dev.spec.unsupported:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._take(sample, dev, None)

    @api
    def nvmlGpmMigSampleGet(self, handle: _Handle, gpu_instance_id: int, sample: Any) -> Any:
        dev = self._dev(handle, self._t())
        if dev.spec.architecture not in _GPM_ARCHES or not 1 <= gpu_instance_id <= len(
                dev.spec.instances):
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._take(sample, dev, gpu_instance_id - 1)

    @api
    def nvmlGpmMetricsGet(self, get: Any) -> Any:
        with self._lock:
            a = self._gpm.get(ctypes.cast(get.sample1, ctypes.c_void_p).value)
            b = self._gpm.get(ctypes.cast(get.sample2, ctypes.c_void_p).value)
        if a is None or b is None or a[1] is None or b[1] is None or a[1][:2] != b[1][:2]:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        (_, _, t1, tot1, wall1), (_, _, t2, tot2, wall2) = a[1], b[1]
        dt = t2 - t1
        # Byte rates per wall-clock second, as a real GPU's would be; under time
        # acceleration the bytes are scenario bytes, like every other simulated counter.
        wall = max(wall2 - wall1, 1e-6)
        names = {1: "graphics_engine", 2: "sm_active", 3: "sm_occupancy", 5: "tensor_active",
                 10: "dram_active", 20: "pcie_tx", 21: "pcie_rx"}
        for k in range(get.numMetrics):
            m = get.metrics[k]
            name = names.get(m.metricId)
            if name is None or dt <= 0:
                m.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            if name.startswith("pcie"):
                m.value = (tot2[name] - tot1[name]) / wall / MIB
            else:
                m.value = (tot2[name] - tot1[name]) / dt * 100.0
            m.nvmlReturn = pynvml.NVML_SUCCESS
        return get

    # -- events ----------------------------------------------------------------------------------

    @api
    def nvmlEventSetCreate(self) -> _EventSet:
        return _EventSet()

    @api
    def nvmlDeviceGetSupportedEventTypes(self, handle: _Handle) -> int:
        dev = self._dev(handle, self._t())
        if "xid_events" in dev.spec.unsupported:
            return 0
        return 0xFF9F  # as the H100 answers (docs/hardware/): XIDs among many others

    @api
    def nvmlDeviceRegisterEvents(self, handle: _Handle, mask: int, event_set: _EventSet) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        if mask & pynvml.nvmlEventTypeXidCriticalError:
            event_set.registered[self._index[id(dev)]] = [handle, t, 0]

    @api
    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> Any:
        give_up = time.monotonic() + timeout_ms / 1000.0
        while True:
            t = self._world.clock.now()
            best = None
            for entry in event_set.registered.values():
                handle, since, delivered = entry
                events = handle.dev.xids_between(since, t)
                if len(events) > delivered and (best is None or
                                                events[delivered][0] < best[2][0]):
                    best = (entry, events, events[delivered])
            if best is not None:
                entry, events, (te, code) = best
                entry[2] += 1
                if entry[2] == len(events) or events[entry[2]][0] > te:
                    # every event up to te delivered: look on from te, so that later calls
                    # do not list every event since the set was registered
                    entry[1], entry[2] = te, 0
                handle = entry[0]
                return pynvml.nvmlFriendlyObject({
                    "device": handle, "eventType": pynvml.nvmlEventTypeXidCriticalError,
                    "eventData": code, "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF})
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise _err(pynvml.NVML_ERROR_TIMEOUT)
            time.sleep(min(0.05, remaining))

    @api
    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        event_set.registered.clear()
