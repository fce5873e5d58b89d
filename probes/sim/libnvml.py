"""A simulated NVML C library (``libnvidia-ml.so.1``) under the vendor's own pynvml.

:func:`load_pynvml` gives each simulation a private copy of the installed ``pynvml.py``
whose ``CDLL`` loads a :class:`SimNvmlLibrary` instead of the driver's library. The backend
therefore runs pynvml's real wrappers: struct versions, ``_nvmlCheckReturn`` and its
``NVMLError`` subclasses, string decoding, the ``_v2``/``_v3`` symbols, field-value and GPM
structs. The library exposes C entry points by their symbol names; each takes the ctypes
arguments pynvml passes, fills what pynvml passes by reference and returns an NVML status
code. A symbol it lacks is missing (AttributeError), which pynvml turns into
FUNCTION_NOT_FOUND, as with an older driver.

Fault injection for tests, on ``Simulation.libnvml``: ``faults.add("nvmlDeviceGetPowerUsage",
device=1, error=3)`` makes that call return NOT_SUPPORTED on the second NVIDIA GPU; a rule
names the C symbol with or without its ``_vN`` suffix (``nvmlInit`` names
``nvmlInitWithFlags``); ``hang=threading.Event()`` blocks it until the event is set;
``garbage=True`` fills what it returns with all-ones bytes.
``library_missing = True`` makes the library vanish: not found (LIBRARY_NOT_FOUND) when
pynvml first loads it, every call UNINITIALIZED once loaded (pynvml never unloads it).
``calls`` and ``calls_by_device`` count the calls by that unsuffixed name.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import itertools
import re
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import pynvml as _pynvml  # the installed copy: its path, and its constants here

from gpuprobe.probes.sim.faults import Fault, Faults, fire, scribble
from gpuprobe.probes.sim.world import SimDevice, SimWorld

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
NOT_AVAILABLE_ULL = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE in an unsigned long long
# L0-to-recovery transitions a clean link has made since boot (power-state changes, link
# retraining at driver load): the H100 of docs/hardware/ read 326 idle and error-free.
RECOVERY_BASELINE = 320
SUPPORTED_EVENTS = 0xFF9F  # nvmlDeviceGetSupportedEventTypes on the H100 of docs/hardware/

_P = _pynvml
SUCCESS = _P.NVML_SUCCESS
_WITHOUT_INIT = frozenset({"nvmlInit", "nvmlInitWithFlags", "nvmlErrorString"})
_ALIASES = {"nvmlInitWithFlags": ("nvmlInit",)}
_SUFFIX = re.compile(r"_v\d+$")
_ADDRESSES = itertools.count(0x7F00_0000_1000, 0x40)  # fake addresses, unique per process


# NVLink fields read per link (scopeId = the link)
_LINK_FIELDS = frozenset((_P.NVML_FI_DEV_NVLINK_GET_STATE, _P.NVML_FI_DEV_NVLINK_GET_VERSION,
                          _P.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                          _P.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
                          _P.NVML_FI_DEV_NVLINK_ERROR_DL_CRC, _P.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY,
                          _P.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY))

@functools.cache
def _field_layout(entry: Any) -> tuple[tuple[struct.Struct, int], ...]:
    """(struct, offset) pairs over one ``c_nvmlFieldValue_t``, from the binding's own
    offsets: fieldId and scopeId; timestamp and latencyUsec; valueType and nvmlReturn; the
    value as unsigned long long; as unsigned int; and the entry's size (struct None)."""
    f = {name: getattr(entry, name).offset for name, *_ in entry._fields_}
    assert f["scopeId"] == f["fieldId"] + 4 and f["latencyUsec"] == f["timestamp"] + 8
    assert f["nvmlReturn"] == f["valueType"] + 4
    two_u32, two_i64 = struct.Struct("=II"), struct.Struct("=qq")
    return ((two_u32, f["fieldId"]), (two_i64, f["timestamp"]), (two_u32, f["valueType"]),
            (struct.Struct("=Q"), f["value"]), (struct.Struct("=I"), f["value"]),
            (two_u32, ctypes.sizeof(entry)))


class NvmlStatus(Exception):
    """Raised inside an entry point: the call returns this status code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _v(x: Any) -> Any:
    """A ctypes scalar's value, or the plain Python value pynvml passed."""
    return getattr(x, "value", x)


def _out(ref: Any) -> Any:
    """The object pynvml passed ``byref``."""
    return ref._obj


def _addr(ptr: Any) -> int | None:
    """The address an opaque handle (a ctypes pointer) holds; None for NULL."""
    if ptr is None:
        return None
    return ctypes.cast(ptr, ctypes.c_void_p).value


def _set_pointer(obj: Any, address: int, offset: int = 0) -> None:
    """Store ``address`` in the pointer ``obj`` (or in its field at ``offset``)."""
    ctypes.c_void_p.from_address(ctypes.addressof(obj) + offset).value = address


def _put_str(buf: Any, length: Any, s: str) -> None:
    data = s.encode()
    if len(data) + 1 > _v(length):
        raise NvmlStatus(_P.NVML_ERROR_INSUFFICIENT_SIZE)
    buf.value = data


_F = TypeVar("_F", bound=Callable[..., Any])


def entry(fn: _F) -> _F:
    """Mark a method as a C entry point: it returns the status code, None for SUCCESS
    (nvmlErrorString returns its string)."""
    fn._nvml_entry = True  # type: ignore[attr-defined]
    return fn


class _EventSet:
    def __init__(self) -> None:
        # device index -> [handle address, registration time, events delivered since then]
        self.registered: dict[int, list] = {}


class SimNvmlLibrary:
    """The simulated ``libnvidia-ml.so.1`` over a :class:`SimWorld`'s NVIDIA devices."""

    def __init__(self, world: SimWorld) -> None:
        self._world = world
        self._devices = world.vendor_devices("nvidia")
        self._index = {id(d): i for i, d in enumerate(self._devices)}
        self._init_count = 0
        self._lock = threading.Lock()
        # handle address <-> (NVIDIA index, generation, MIG instance or None)
        self._handles: dict[int, tuple[int, int, int | None]] = {}
        self._handle_at: dict[tuple[int, int, int | None], int] = {}
        self._event_sets: dict[int, _EventSet] = {}
        # sample address -> its reading (device id, instance, t, totals, wall time) or None
        self._gpm: dict[int, tuple[int, int | None, float, dict, float] | None] = {}
        self.faults = Faults()
        self.calls: Counter = Counter()
        self.calls_by_device: Counter = Counter()  # (function, NVIDIA index or None)
        self.library_missing = False
        self.loaded = False
        for name in self.entry_points():
            setattr(self, name, self._bind(name, getattr(type(self), name)))

    @classmethod
    def entry_points(cls) -> list[str]:
        return sorted(n for n, v in vars(cls).items() if getattr(v, "_nvml_entry", False))

    # -- plumbing --------------------------------------------------------------------------------

    def _bind(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        base = _SUFFIX.sub("", name)
        names = (name, base, *_ALIASES.get(name, ())) if base != name \
            else (name, *_ALIASES.get(name, ()))

        @functools.wraps(method)
        def c_function(*args: Any) -> Any:
            # a plain function, not a bound method: pynvml sets ``restype`` on some
            self.calls[base] += 1
            if self.library_missing:
                return _P.NVML_ERROR_UNINITIALIZED
            if name not in _WITHOUT_INIT and self._init_count <= 0:
                return _P.NVML_ERROR_UNINITIALIZED
            device = self._device_of(name, args)
            self.calls_by_device[(base, device)] += 1
            try:
                rule = self._fault(names, device)
                got = method(self, *args)
            except NvmlStatus as e:
                return e.code
            if got is None and rule is not None and rule.garbage:
                scribble(args)
            return SUCCESS if got is None else got
        return c_function

    def _fault(self, names: tuple[str, ...], device: int | None) -> Fault | None:
        rule = None
        for n in names:
            rule = self.faults.match(n, device)
            if rule is not None:
                break
        fire(rule, NvmlStatus)
        return rule

    def _device_of(self, name: str, args: tuple) -> int | None:
        if name == "nvmlDeviceGetHandleByIndex_v2" and args:
            return int(_v(args[0]))
        if args and isinstance(args[0], ctypes._Pointer):
            known = self._handles.get(_addr(args[0]) or 0)
            return known[0] if known else None
        return None

    def _t(self) -> float:
        return self._world.now()

    def _handle(self, index: int, gen: int, instance: int | None = None) -> int:
        key = (index, gen, instance)
        with self._lock:
            address = self._handle_at.get(key)
            if address is None:
                address = self._handle_at[key] = next(_ADDRESSES)
                self._handles[address] = key
        return address

    def _resolve(self, handle: Any, t: float) -> tuple[SimDevice, int, int | None]:
        key = self._handles.get(_addr(handle) or 0)
        if key is None:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        index, gen, instance = key
        dev = self._devices[index]
        if dev.lost_at(t) or gen != dev.generation_at(t):
            raise NvmlStatus(_P.NVML_ERROR_GPU_IS_LOST)
        return dev, gen, instance

    def _dev(self, handle: Any, t: float | None = None, mig_ok: bool = False) -> SimDevice:
        dev, _, instance = self._resolve(handle, self._t() if t is None else t)
        if instance is not None and not mig_ok:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        return dev

    @staticmethod
    def _supports(dev: SimDevice, feature: str) -> None:
        if feature in dev.spec.unsupported:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)

    def _uint(self, handle: Any, ref: Any, read: Callable[[SimDevice, float], float],
              feature: str | None = None) -> None:
        """Fill an out-parameter with what ``read`` says of the (physical) GPU."""
        t = self._t()
        dev = self._dev(handle, t)
        if feature:
            self._supports(dev, feature)
        _out(ref).value = int(read(dev, t))

    # -- library -----------------------------------------------------------------------------------

    def load(self) -> SimNvmlLibrary:
        """What pynvml's ``CDLL("libnvidia-ml.so.1")`` gives: this library, or OSError
        while it is missing."""
        if self.library_missing:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file: No such file "
                          "or directory")
        self.loaded = True
        return self

    @entry
    def nvmlInitWithFlags(self, flags: Any) -> None:
        self._init_count += 1

    @entry
    def nvmlShutdown(self) -> int | None:
        if self._init_count <= 0:
            return _P.NVML_ERROR_UNINITIALIZED
        self._init_count -= 1
        return None

    @entry
    def nvmlErrorString(self, result: Any) -> bytes:  # restype c_char_p: the string
        return _P.NVMLError._errcode_to_string.get(_v(result), "Unknown Error").encode()

    @entry
    def nvmlSystemGetDriverVersion(self, buf: Any, length: Any) -> None:
        _put_str(buf, length, "580.95.05-sim")

    @entry
    def nvmlSystemGetNVMLVersion(self, buf: Any, length: Any) -> None:
        _put_str(buf, length, "13.580.95.05-sim")

    @entry
    def nvmlSystemGetCudaDriverVersion_v2(self, ref: Any) -> None:
        _out(ref).value = 13000

    # -- enumeration and identity ----------------------------------------------------------------

    @entry
    def nvmlDeviceGetCount_v2(self, ref: Any) -> None:
        _out(ref).value = len(self._devices)

    @entry
    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, ref: Any) -> None:
        index = int(_v(index))
        if not 0 <= index < len(self._devices):
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        dev, t = self._devices[index], self._t()
        if dev.lost_at(t):
            raise NvmlStatus(_P.NVML_ERROR_GPU_IS_LOST)
        _set_pointer(_out(ref), self._handle(index, dev.generation_at(t)))

    @entry
    def nvmlDeviceGetHandleByUUID(self, uuid: Any, ref: Any) -> None:
        t = self._t()
        raw = _v(uuid)
        wanted = raw.decode() if isinstance(raw, bytes) else str(raw)
        for i, dev in enumerate(self._devices):
            if wanted == dev.uuid or wanted in dev.instance_uuids:
                if dev.lost_at(t):
                    raise NvmlStatus(_P.NVML_ERROR_GPU_IS_LOST)
                instance = dev.instance_uuids.index(wanted) if wanted != dev.uuid else None
                _set_pointer(_out(ref), self._handle(i, dev.generation_at(t), instance))
                return
        raise NvmlStatus(_P.NVML_ERROR_NOT_FOUND)

    @entry
    def nvmlDeviceGetUUID(self, handle: Any, buf: Any, length: Any) -> None:
        dev, _, instance = self._resolve(handle, self._t())
        _put_str(buf, length, dev.uuid if instance is None else dev.instance_uuids[instance])

    @entry
    def nvmlDeviceGetName(self, handle: Any, buf: Any, length: Any) -> None:
        dev, _, instance = self._resolve(handle, self._t())
        name = dev.spec.model if instance is None else \
            f"{dev.spec.model} MIG {dev.spec.instances[instance].profile}"
        _put_str(buf, length, name)

    @entry
    def nvmlDeviceGetIndex(self, handle: Any, ref: Any) -> None:
        _out(ref).value = self._index[id(self._dev(handle))]

    @entry
    def nvmlDeviceGetPciInfo_v3(self, handle: Any, ref: Any) -> None:
        dev = self._dev(handle)
        info = _out(ref)
        bus_id = dev.pci_bus_id
        info.busId = bus_id.encode()
        info.busIdLegacy = bus_id[4:].encode()
        domain, bus, rest = bus_id.split(":")
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest[:2], 16)
        info.pciDeviceId = 0x233010DE
        info.pciSubSystemId = 0x16C110DE

    @entry
    def nvmlDeviceGetSerial(self, handle: Any, buf: Any, length: Any) -> None:
        _put_str(buf, length, self._dev(handle).spec.serial)

    @entry
    def nvmlDeviceGetVbiosVersion(self, handle: Any, buf: Any, length: Any) -> None:
        self._dev(handle)
        _put_str(buf, length, "96.00.99.00.01")

    @entry
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> None:
        cc = _COMPUTE_CAPABILITY.get(self._dev(handle).spec.architecture, (9, 0))
        _out(major).value, _out(minor).value = cc

    @entry
    def nvmlDeviceGetArchitecture(self, handle: Any, ref: Any) -> None:
        _out(ref).value = _ARCH_CODES.get(self._dev(handle).spec.architecture, 0xFFFFFFFF)

    @entry
    def nvmlDeviceGetComputeMode(self, handle: Any, ref: Any) -> None:
        mode = self._dev(handle).spec.compute_mode
        _out(ref).value = {"default": _P.NVML_COMPUTEMODE_DEFAULT,
                           "exclusive_process": _P.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
                           "prohibited": _P.NVML_COMPUTEMODE_PROHIBITED}[mode]

    # -- MIG -------------------------------------------------------------------------------------

    @entry
    def nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> None:
        dev = self._dev(handle)
        if dev.spec.architecture not in ("ampere", "hopper", "blackwell"):
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        mode = 1 if dev.spec.instances else 0
        _out(current).value = _out(pending).value = mode

    @entry
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, ref: Any) -> None:
        _out(ref).value = 7 if self._dev(handle).spec.instances else 0

    @entry
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, ref: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        _, gen, _ = self._resolve(handle, t)
        index = int(_v(index))
        if not 0 <= index < len(dev.spec.instances):
            raise NvmlStatus(_P.NVML_ERROR_NOT_FOUND)
        _set_pointer(_out(ref), self._handle(self._index[id(dev)], gen, index))

    @entry
    def nvmlDeviceGetGpuInstanceId(self, handle: Any, ref: Any) -> None:
        _, _, instance = self._resolve(handle, self._t())
        if instance is None:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        _out(ref).value = instance + 1

    # -- memory ----------------------------------------------------------------------------------

    def _memory(self, handle: Any) -> tuple[float, float, float]:
        t = self._t()
        dev, _, instance = self._resolve(handle, t)
        st = dev.state(t)
        if instance is not None:
            return dev.spec.instances[instance].memory, st.instance_used[instance], 0.0
        return dev.spec.memory, st.used, dev.spec.reserved

    @entry
    def nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> None:
        total, used, reserved = self._memory(handle)
        m = _out(ref)  # v1: the driver's reservation counts as used
        m.total, m.used = int(total), int(used + reserved)
        m.free = int(total - used - reserved)

    @entry
    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, ref: Any) -> None:
        m = _out(ref)
        if m.version != _P.nvmlMemory_v2:
            raise NvmlStatus(_P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        total, used, reserved = self._memory(handle)
        m.total, m.reserved, m.used = int(total), int(reserved), int(used)
        m.free = int(total - reserved - used)

    @entry
    def nvmlDeviceGetBAR1MemoryInfo(self, handle: Any, ref: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "bar1")
        b = _out(ref)
        b.bar1Total = 128 * 1024 * MIB if dev.spec.architecture == "hopper" else 64 * 1024 * MIB
        b.bar1Used = int(2 * MIB + dev.state(t).used * 0.001)
        b.bar1Free = b.bar1Total - b.bar1Used

    # -- thermal, power, clocks -----------------------------------------------------------------

    @entry
    def nvmlDeviceGetTemperatureV(self, handle: Any, ref: Any) -> None:
        temp = _out(ref)
        if temp.version != _P.nvmlTemperature_v1:
            raise NvmlStatus(_P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if temp.sensorType != _P.NVML_TEMPERATURE_GPU:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        t = self._t()
        temp.temperature = round(self._dev(handle, t).state(t).temperature)

    @entry
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, ref: Any) -> None:
        if _v(sensor) != _P.NVML_TEMPERATURE_GPU:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        self._uint(handle, ref, lambda d, t: round(d.state(t).temperature))

    @entry
    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: Any, ref: Any) -> None:
        spec = self._dev(handle).spec
        values = {_P.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: spec.shutdown_celsius,
                  _P.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: spec.slowdown_celsius,
                  _P.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: spec.max_operating_celsius}
        if spec.architecture in _HBM_ARCHES and "memory_temperature" not in spec.unsupported:
            values[_P.NVML_TEMPERATURE_THRESHOLD_MEM_MAX] = 95.0
        which = _v(threshold)
        if which not in values:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        _out(ref).value = int(values[which])

    @entry
    def nvmlDeviceGetPowerUsage(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.state(t).power_watts * 1000)

    @entry
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.spec.limit_watts * 1000, "power_limit")

    @entry
    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any, low: Any,
                                                     high: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "power_limit")
        _out(low).value = int(dev.spec.min_limit_watts * 1000)
        _out(high).value = int(dev.spec.max_watts * 1000)

    @entry
    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.spec.default_limit_watts * 1000, "power_limit")

    # -- fans: passively cooled boards (spec.fans == 0) answer NOT_SUPPORTED -----------------

    def _fans(self, handle: Any) -> tuple[SimDevice, float]:
        t = self._t()
        dev = self._dev(handle, t)
        if dev.spec.fans == 0 or "fan" in dev.spec.unsupported:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        return dev, t

    @entry
    def nvmlDeviceGetNumFans(self, handle: Any, ref: Any) -> None:
        dev, _ = self._fans(handle)
        _out(ref).value = dev.spec.fans

    @entry
    def nvmlDeviceGetFanSpeed_v2(self, handle: Any, fan: Any, ref: Any) -> None:
        dev, t = self._fans(handle)
        if not 0 <= int(_v(fan)) < dev.spec.fans:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        _out(ref).value = round(100 * dev.state(t).fan) + int(_v(fan))

    @entry
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.totals(t)["energy_j"] * 1000, "energy")

    @entry
    def nvmlDeviceGetClockInfo(self, handle: Any, clock: Any, ref: Any) -> None:
        def read(d: SimDevice, t: float) -> float:
            st = d.state(t)
            return {_P.NVML_CLOCK_GRAPHICS: st.sm_hz, _P.NVML_CLOCK_SM: st.sm_hz,
                    _P.NVML_CLOCK_MEM: st.memory_hz,
                    _P.NVML_CLOCK_VIDEO: st.sm_hz * 0.85}[_v(clock)] / 1e6
        self._uint(handle, ref, read)

    @entry
    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock: Any, ref: Any) -> None:
        def read(d: SimDevice, t: float) -> float:
            s = d.spec
            return {_P.NVML_CLOCK_GRAPHICS: s.sm_max_hz, _P.NVML_CLOCK_SM: s.sm_max_hz,
                    _P.NVML_CLOCK_MEM: s.memory_hz,
                    _P.NVML_CLOCK_VIDEO: s.sm_max_hz * 0.85}[_v(clock)] / 1e6
        self._uint(handle, ref, read)

    @entry
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, ref: Any) -> None:
        def read(d: SimDevice, t: float) -> int:
            mask = 0
            for reason in d.state(t).throttle:
                mask |= _THROTTLE_BITS[reason]
            return mask
        self._uint(handle, ref, read)

    @entry
    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: 0x1FF)  # as the H100 (docs/hardware/)

    @entry
    def nvmlDeviceGetPerformanceState(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.state(t).pstate)

    # -- PCIe ------------------------------------------------------------------------------------

    @entry
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.state(t).generation)

    @entry
    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.state(t).width)

    @entry
    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.spec.max_generation)

    @entry
    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any, ref: Any) -> None:
        self._uint(handle, ref, lambda d, t: d.spec.max_width)

    # -- utilization -----------------------------------------------------------------------------

    @entry
    def nvmlDeviceGetUtilizationRates(self, handle: Any, ref: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        self._supports(dev, "utilization")
        if dev.spec.instances:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)  # as on a MIG-enabled GPU
        u = _out(ref)
        util = dev.state(t).utilization
        u.gpu, u.memory = round(util * 100), round(util * 45)

    def _codec(self, handle: Any, util: Any, period: Any) -> None:
        """The encoder's or decoder's: idle, over a sampling period of 100 ms (the H100's)."""
        dev = self._dev(handle)
        self._supports(dev, "encoder")
        if dev.spec.instances:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        _out(util).value, _out(period).value = 0, 100000

    @entry
    def nvmlDeviceGetEncoderUtilization(self, handle: Any, util: Any, period: Any) -> None:
        self._codec(handle, util, period)

    @entry
    def nvmlDeviceGetDecoderUtilization(self, handle: Any, util: Any, period: Any) -> None:
        self._codec(handle, util, period)

    # -- field values ----------------------------------------------------------------------------

    def _link_field(self, dev: SimDevice, t: float, fid: int, link: int
                    ) -> tuple[int, float] | None:
        """A per-link NVLink field (scopeId = link), or None: not a link field, or a link
        the device does not have."""
        ull, uint = _P.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, _P.NVML_VALUE_TYPE_UNSIGNED_INT
        links = dev.spec.links
        if fid not in _LINK_FIELDS or not 0 <= link < links.count:
            return None
        if fid == _P.NVML_FI_DEV_NVLINK_GET_STATE:
            return uint, 1 if dev.link_up(t, link) else 0  # NVML_FEATURE_ENABLED / DISABLED
        if fid == _P.NVML_FI_DEV_NVLINK_GET_VERSION:  # nvmlNvlinkVersion_t: 4.0 is 6
            return uint, {1: 1, 2: 2, 3: 4, 4: 6, 5: 7, 6: 8}.get(links.version, 0)
        if fid in (_P.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                   _P.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX):  # KiB since the driver loaded
            tx = fid == _P.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
            return ull, int(dev.totals(t)[f"link_{'tx' if tx else 'rx'}_{link}"] / 1024)
        kind = {_P.NVML_FI_DEV_NVLINK_ERROR_DL_CRC: "crc",
                _P.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY: "replay",
                _P.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY: "recovery"}[fid]
        return ull, dev.link_errors(t, link, kind)

    def _field(self, dev: SimDevice, t: float, fid: int) -> tuple[int, float] | None:
        """(valueType, value) of a field, or None when the device does not have it."""
        spec, arch = dev.spec, dev.spec.architecture
        u = spec.unsupported
        ull, uint = _P.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, _P.NVML_VALUE_TYPE_UNSIGNED_INT
        ecc_ok = spec.ecc and "ecc" not in u
        if fid == _P.NVML_FI_DEV_ECC_CURRENT and "ecc" not in u:
            return ull, 1 if spec.ecc else 0  # unsigned long long, as the H100 answers
        if fid in (3, 4, 5, 6) and ecc_ok:
            corrected, uncorrected = dev.ecc(t)
            lifetime = LIFETIME_CORRECTED if fid == 5 else 0
            return ull, (corrected if fid in (3, 5) else uncorrected) + lifetime
        if fid in (29, 30, 31) and ecc_ok and arch in ("volta", "turing"):
            return uint, 0
        throttle = {74: "thr_power_cap", 76: None, 269: "thr_sw_thermal", 270: "thr_hw_thermal",
                    271: None, 75: "thr_hw_thermal", 77: None, 78: "thr_idle", 79: None,
                    80: None, 81: None}
        if fid in throttle and "throttle_counters" not in u:
            key = throttle[fid]
            return ull, int(dev.totals(t)[key] * 1e9) if key else 0
        if fid == _P.NVML_FI_DEV_MEMORY_TEMP and arch in _HBM_ARCHES \
                and "memory_temperature" not in u:
            return uint, round(dev.state(t).memory_temperature)
        if fid == _P.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION and "energy" not in u:
            return ull, int(dev.totals(t)["energy_j"] * 1000)
        if fid == _P.NVML_FI_DEV_PCIE_REPLAY_COUNTER:
            return uint, dev.replays(t)
        if fid in (142, 143, 144, 145) and ecc_ok and arch not in ("volta", "turing") \
                and "remapped_rows" not in u:
            cor, unc, pending = dev.remapped_rows(t)
            return ull, {142: cor, 143: unc, 144: int(pending), 145: 0}[fid]
        if fid == 169:  # nonzero on a clean link; grows only with link errors
            return uint, RECOVERY_BASELINE + 3 * dev.index + dev.replays(t) // 8
        if fid in (174, 177):
            return uint, dev.replays(t) // (2 if fid == 174 else 3)
        if fid == 173:  # correctable errors come with the replays
            return uint, dev.replays(t) // 2
        if fid in (95, 175, 176, 178, 179, 180, 181, 182, 183):
            return uint, 0
        if fid in (226, 227, 230):  # reset status, drain-and-reset status, recovery action
            needed = dev.reset_required(t)
            return uint, int(needed) if fid != 227 else 0
        if fid == _P.NVML_FI_DEV_NVLINK_LINK_COUNT and spec.links.count:
            return uint, spec.links.count
        if fid in (197, 198) and "pcie_counters" not in u:
            # 32 bits wide, wrapping, as on the H100 (driver 580) we measured
            return uint, int(dev.totals(t)["pcie_tx" if fid == 197 else "pcie_rx"]) % 2**32
        return None

    @entry
    def nvmlDeviceGetFieldValues(self, handle: Any, count: Any, ref: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        values = _out(ref)
        now_us = int(time.time() * 1e6)
        # Through the array's memory, not pynvml's structure attributes, whose __setattr__
        # and __getattribute__ were most of this call's cost (cProfile; docs/performance.md).
        (ids, o_ids), (stamp, o_stamp), (ret, o_ret), (ull, o_val), (uint, _), (_, size) = \
            _field_layout(type(values)._type_)
        mem = memoryview(values).cast("B")
        link_fields = _LINK_FIELDS
        for i in range(int(_v(count))):
            base = i * size
            fid, scope = ids.unpack_from(mem, base + o_ids)
            got = self._link_field(dev, t, fid, scope) if fid in link_fields \
                else self._field(dev, t, fid)
            stamp.pack_into(mem, base + o_stamp, now_us, 1)
            if got is None:
                ret.pack_into(mem, base + o_ret, 0, _P.NVML_ERROR_NOT_SUPPORTED)
                continue
            vtype, value = got
            ret.pack_into(mem, base + o_ret, vtype, SUCCESS)
            (ull if vtype == _P.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG else uint).pack_into(
                mem, base + o_val, int(value))

    # -- processes -------------------------------------------------------------------------------

    def _process_list(self, handle: Any, count_ref: Any, infos: Any,
                      listed: list[tuple[int, int, int, int]]) -> int | None:
        """The two-call protocol of nvmlDevice*RunningProcesses_v3: too small an array
        (the first call passes none) gets INSUFFICIENT_SIZE and the count needed."""
        count = _out(count_ref)
        room = count.value
        count.value = len(listed)
        if not listed:
            return None
        if infos is None or room < len(listed):
            return _P.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, used, gi, ci) in enumerate(listed):
            info = infos[i]
            info.pid, info.usedGpuMemory = pid, used
            info.gpuInstanceId, info.computeInstanceId = gi, ci
        return None

    @entry
    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any,
                                                infos: Any) -> int | None:
        t = self._t()
        dev, _, instance = self._resolve(handle, t)
        self._world.sync_processes(t, dev)
        hidden = "process_memory" in dev.spec.unsupported
        listed = []
        for p in dev.state(t).processes:
            inst = p.spec.instance if dev.spec.instances else None
            if instance is not None and inst != instance:
                continue
            if p.memory <= 0 and p.spec.memory.free_at is None:
                continue
            gi = 0xFFFFFFFF if inst is None else inst + 1
            listed.append((p.pid, NOT_AVAILABLE_ULL if hidden else int(p.memory), gi,
                           0 if inst is not None else gi))
        return self._process_list(handle, count, infos, listed)

    @entry
    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: Any, count: Any,
                                                 infos: Any) -> int | None:
        self._resolve(handle, self._t())
        return self._process_list(handle, count, infos, [])

    @entry
    def nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle: Any, count: Any,
                                                   infos: Any) -> int | None:
        self._resolve(handle, self._t())
        return self._process_list(handle, count, infos, [])

    # Per-process utilization: the driver samples every sixth of a second and keeps, for each
    # process that had non-zero utilization in a period, one sample stamped with the CPU time
    # (microseconds); a call returns those newer than lastSeenTimeStamp, NOT_FOUND if none.
    UTIL_PERIOD = 1 / 6

    def _process_samples(self, handle: Any, last_seen: int) -> list[tuple[int, int, int, int]]:
        """(pid, timestamp, sm %, memory %) of the latest sample period, if newer than
        ``last_seen``; NOT_FOUND when there is none, as from the driver."""
        t = self._t()
        dev = self._dev(handle, t)  # a MIG instance: NOT_SUPPORTED
        self._supports(dev, "process_engine_time")
        self._world.sync_processes(t, dev)
        stamp = int(int(t / self.UTIL_PERIOD) * self.UTIL_PERIOD * 1e6)
        busy = [p for p in dev.state(t).processes if p.memory > 0 and p.utilization > 0]
        if stamp <= last_seen or not busy:
            raise NvmlStatus(_P.NVML_ERROR_NOT_FOUND)
        total = max(1.0, sum(p.utilization for p in busy))  # the SMs are shared out
        return [(p.pid, stamp, round(100 * p.utilization / total),
                 round(45 * p.utilization / total)) for p in busy]

    @entry
    def nvmlDeviceGetProcessUtilization(self, handle: Any, samples: Any, count_ref: Any,
                                        last_seen: Any) -> int | None:
        listed = self._process_samples(handle, int(_v(last_seen)))
        count = _out(count_ref)
        room, count.value = count.value, len(listed)
        if samples is None or room < len(listed):
            return _P.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, stamp, sm, mem) in enumerate(listed):
            out = samples[i]
            out.pid, out.timeStamp, out.smUtil, out.memUtil = pid, stamp, sm, mem
            out.encUtil = out.decUtil = 0
        return None

    @entry
    def nvmlDeviceGetProcessesUtilizationInfo(self, handle: Any, ref: Any) -> int | None:
        info = _out(ref)
        if info.version != _P.ProcessesUtilizationInfo_v1:
            return _P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        listed = self._process_samples(handle, int(info.lastSeenTimeStamp))
        room, info.processSamplesCount = info.processSamplesCount, len(listed)
        if not info.procUtilArray or room < len(listed):
            return _P.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, stamp, sm, mem) in enumerate(listed):
            out = info.procUtilArray[i]
            out.pid, out.timeStamp, out.smUtil, out.memUtil = pid, stamp, sm, mem
            out.encUtil = out.decUtil = out.jpgUtil = out.ofaUtil = 0
        return None

    # -- GPM -------------------------------------------------------------------------------------

    @entry
    def nvmlGpmQueryDeviceSupport(self, handle: Any, ref: Any) -> None:
        dev = self._dev(handle)
        s = _out(ref)
        if s.version != _P.NVML_GPM_SUPPORT_VERSION:
            raise NvmlStatus(_P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        s.isSupportedDevice = int(dev.spec.architecture in _GPM_ARCHES
                                  and "gpm" not in dev.spec.unsupported)

    @entry
    def nvmlGpmSampleAlloc(self, ref: Any) -> None:
        address = next(_ADDRESSES)
        with self._lock:
            self._gpm[address] = None
        _set_pointer(_out(ref), address)

    @entry
    def nvmlGpmSampleFree(self, sample: Any) -> None:
        with self._lock:
            address = _addr(sample)
            if address not in self._gpm:
                raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
            del self._gpm[address]

    def _take(self, sample: Any, dev: SimDevice, instance: int | None) -> None:
        t = self._t()
        address = _addr(sample)
        with self._lock:
            if address not in self._gpm:
                raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
            self._gpm[address] = (id(dev), instance, t, dev.totals(t, instance),
                                  time.monotonic())

    @entry
    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> None:
        dev = self._dev(handle)
        if dev.spec.architecture not in _GPM_ARCHES or "gpm" in dev.spec.unsupported:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        self._take(sample, dev, None)

    @entry
    def nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: Any, sample: Any) -> None:
        dev = self._dev(handle)
        gi = int(_v(gpu_instance_id))
        if dev.spec.architecture not in _GPM_ARCHES or not 1 <= gi <= len(dev.spec.instances):
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)
        self._take(sample, dev, gi - 1)

    @entry
    def nvmlGpmMetricsGet(self, ref: Any) -> None:
        get = _out(ref)
        if get.version != _P.NVML_GPM_METRICS_GET_VERSION:
            raise NvmlStatus(_P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        with self._lock:
            a = self._gpm.get(_addr(get.sample1) or 0)
            b = self._gpm.get(_addr(get.sample2) or 0)
        if a is None or b is None or a[:2] != b[:2]:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        (_, _, t1, tot1, wall1), (_, _, t2, tot2, wall2) = a, b
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
                m.nvmlReturn = _P.NVML_ERROR_NOT_SUPPORTED
                continue
            if name.startswith("pcie"):
                m.value = (tot2[name] - tot1[name]) / wall / MIB
            else:
                m.value = (tot2[name] - tot1[name]) / dt * 100.0
            m.nvmlReturn = SUCCESS

    # -- events ----------------------------------------------------------------------------------

    @entry
    def nvmlEventSetCreate(self, ref: Any) -> None:
        address = next(_ADDRESSES)
        with self._lock:
            self._event_sets[address] = _EventSet()
        _set_pointer(_out(ref), address)

    def _event_set(self, ptr: Any) -> _EventSet:
        found = self._event_sets.get(_addr(ptr) or 0)
        if found is None:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)
        return found

    @entry
    def nvmlDeviceGetSupportedEventTypes(self, handle: Any, ref: Any) -> None:
        # as the H100 answers (docs/hardware/): XIDs among many others
        self._uint(handle, ref,
                   lambda d, t: 0 if "xid_events" in d.spec.unsupported else SUPPORTED_EVENTS)

    @entry
    def nvmlDeviceRegisterEvents(self, handle: Any, mask: Any, event_set: Any) -> None:
        t = self._t()
        dev = self._dev(handle, t)
        es = self._event_set(event_set)
        if _v(mask) & ~SUPPORTED_EVENTS:
            raise NvmlStatus(_P.NVML_ERROR_NOT_SUPPORTED)  # none of them registered
        if _v(mask):
            es.registered[self._index[id(dev)]] = [_addr(handle), t, 0, int(_v(mask))]

    @entry
    def nvmlEventSetWait_v2(self, event_set: Any, ref: Any, timeout_ms: Any) -> None:
        es = self._event_set(event_set)
        data = _out(ref)
        give_up = time.monotonic() + _v(timeout_ms) / 1000.0
        # The real call blocks in the driver; looked at every 50 ms only where an XID can
        # come, this one costs no CPU either on a quiet host.
        step = 0.05 if any(self._devices[i].has_events() for i in es.registered) else 1e9
        while True:
            t = self._world.clock.now()
            best = None
            for index, entry_ in es.registered.items():
                _, since, delivered, mask = entry_
                events = self._devices[index].events_between(since, t, mask)
                if len(events) > delivered and (best is None or
                                                events[delivered][0] < best[2][0]):
                    best = (entry_, events, events[delivered])
            if best is not None:
                entry_, events, (te, kind, code) = best
                entry_[2] += 1
                if entry_[2] == len(events) or events[entry_[2]][0] > te:
                    # every event up to te delivered: look on from te, so that later calls
                    # do not list every event since the set was registered
                    entry_[1], entry_[2] = te, 0
                _set_pointer(data, entry_[0], type(data).device.offset)
                data.eventType = kind
                data.eventData = code
                data.gpuInstanceId = data.computeInstanceId = 0xFFFFFFFF
                return
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise NvmlStatus(_P.NVML_ERROR_TIMEOUT)
            time.sleep(min(step, remaining))

    @entry
    def nvmlEventSetFree(self, event_set: Any) -> None:
        with self._lock:
            es = self._event_sets.pop(_addr(event_set) or 0, None)
        if es is None:
            raise NvmlStatus(_P.NVML_ERROR_INVALID_ARGUMENT)


_copies = itertools.count()


def load_pynvml(library: SimNvmlLibrary) -> ModuleType:
    """A private copy of the installed pynvml whose ``CDLL`` loads ``library``: one
    process's NVML, sharing no state (loaded library, function cache, refcount) with the
    real module or another copy."""
    path = _pynvml.__file__
    assert path is not None
    name = f"_gpuprobe_sim_pynvml_{next(_copies)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # pynvml looks itself up in sys.modules while it loads (to add its NVMLError_*
    # classes); under its unique name, and only for that long.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]

    def cdll(_name: str, *args: Any, **kwargs: Any) -> SimNvmlLibrary:
        return library.load()

    module.CDLL = cdll  # type: ignore[attr-defined]
    return module
