"""A simulated libamd_smi.so under the real amdsmi 7.0.2 Python package.

The C layer is ours, the binding is the vendor's: :func:`load_amdsmi` gives each simulation a
private copy of the installed ``amdsmi`` package (its own module names, so two simulations
never share the library's init state) whose ``ctypes.CDLL`` hands back a
:class:`SimLibAmdSmi` instead of loading the shared object. Every dict shape, ``'N/A'``
conversion, list-valued key, exception class and status code the backend sees is therefore
``amdsmi_interface.py``'s own; this module only fills the ctypes structures the C library
fills and returns its ``amdsmi_status_t``.

What the library returns, as 7.0.2 does:

* all-ones "no value" in each field's width (0xFFFF in the 16-bit gpu_metrics fields, so
  ``mem_voltage`` and a Radeon's ``mm_activity`` come back as 0xFFFF and the binding turns
  them into ``'N/A'``); MI300's ``indep_throttle_status`` all ones (its SMU never fills it);
* mixed units: bytes and MB, microwatts and watts, MT/s and tenths of GT/s, energy ticks;
* partitions as separate handles, device-wide sensors reading 0 on partitions other than 0;
* every KFD process listed under every GPU's handle, with that GPU's usage (zero where it
  holds nothing), the caller's own pid among them on MI300; exited processes kept in the
  list until no process is left;
* events of every GPU whose notification is enabled from one global read, NO_DATA (40)
  when none came;
* slow calls that really block (violation status 0.1 s, PCIe throughput 1 s).

A symbol the simulation does not implement answers AMDSMI_STATUS_NOT_SUPPORTED (2), as an
unimplemented feature of the real library does. Fault injection works on the C symbols:
``libamdsmi.faults.add("amdsmi_get_power_info", device=0, error=2)``; ``library_missing``.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib.util
import itertools
import os
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuprobe.daemon.core.model import pcie_link_bytes_per_second
from gpuprobe.probes.sim.faults import Face, Faults, scribble
from gpuprobe.probes.sim.world import SimDevice, SimWorld

MIB = 1024 * 1024
ENERGY_RESOLUTION_UJ = 15.259
FAN_MAX = 255  # AMDSMI_MAX_FAN_SPEED: amdsmi_get_gpu_fan_speed counts 0 to 255
U16, U32, U64 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
_MTS = {1: 2500, 2: 5000, 3: 8000, 4: 16000, 5: 32000, 6: 64000}
_CDNA = {"cdna2", "cdna3", "cdna4"}
_METRICS_V15 = {"cdna3", "cdna4"}  # gpu_metrics v1.5+: pcie_bandwidth_*, xcp_stats host limits
# reasons of the world -> SMU_THROTTLER bit of indep_throttle_status
_THROTTLE_BITS = {"power_cap": 0, "sw_thermal": 33, "hw_thermal": 36, "hw_slowdown": 47}
# amdsmi_evt_notification_type_t
_EVENTS = {"THERMAL_THROTTLE": 2, "GPU_PRE_RESET": 3, "GPU_POST_RESET": 4}
SUCCESS, NOT_SUPPORTED, NOT_FOUND, NOT_INIT, DRIVER_NOT_LOADED, NO_DATA = 0, 2, 31, 32, 34, 40


class _Status(Exception):
    """An amdsmi_status_t a C function returns instead of SUCCESS."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _obj(arg: Any) -> Any:
    """The object behind ``ctypes.byref(x)`` (x itself otherwise)."""
    return getattr(arg, "_obj", arg)


def _value(arg: Any) -> int:
    """An integer argument as the C function receives it (an enum, c_uint32, int)."""
    return int(getattr(arg, "value", arg))


class _Symbol:
    """One exported function: takes ``restype``/``argtypes`` as ctypes functions do and
    returns the status code."""

    def __init__(self, lib: SimLibAmdSmi, name: str,
                 fn: Callable[..., None] | None) -> None:
        self.name, self._lib, self._fn = name, lib, fn
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> int:
        try:
            rule = self._lib._enter(self.name, args)
            if self._fn is None:
                return NOT_SUPPORTED
            self._fn(*args)
        except _Status as e:
            return e.code
        if rule is not None and rule.garbage:
            scribble(args)
        return SUCCESS


class _Target:
    """What a processor handle points at."""

    __slots__ = ("dev", "gen", "index", "init", "partition")

    def __init__(self, dev: SimDevice, index: int, partition: int | None, gen: int,
                 init: int) -> None:
        self.dev, self.index, self.partition, self.gen, self.init = (dev, index, partition,
                                                                     gen, init)


class SimRocmCore:
    """librocm-core.so: ``getROCmVersion``, which amdsmi_get_rocm_version calls."""

    def __init__(self, lib: SimLibAmdSmi) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        if name != "getROCmVersion":
            raise AttributeError(f"librocm-core.so: undefined symbol: {name}")
        lib = self._lib

        def get(major: Any, minor: Any, patch: Any) -> int:
            lib.calls["getROCmVersion"] += 1
            parts = [int(p) for p in lib.rocm_version.split(".")[:3]] + [0, 0, 0]
            for ref, v in zip((major, minor, patch), parts, strict=False):
                _obj(ref).value = v
            return 0

        return _Fn(get)


class _Fn:
    """A plain function that accepts restype/argtypes."""

    def __init__(self, fn: Callable[..., int]) -> None:
        self._fn = fn
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> int:
        return self._fn(*args)


class SimLibAmdSmi(Face):
    """libamd_smi.so over a :class:`SimWorld`: one instance is one process's library."""

    _WITHOUT_INIT = frozenset({"amdsmi_init", "amdsmi_get_lib_version"})
    _NOT_INITIALIZED = NOT_INIT

    def __init__(self, world: SimWorld) -> None:
        self._world = world
        self._devices = world.vendor_devices("amd")
        self._init_count = 0
        self._init_serial = 0  # handles are invalid after a shutdown
        self._targets: dict[int, _Target] = {}
        self._values: dict[tuple, int] = {}
        self._next_handle = 0x1000
        self._lock = threading.Lock()
        self._symbols: dict[str, _Symbol] = {}
        self._notify: dict[int, int] = {}  # device index -> event mask
        self._since: dict[int, float] = {}  # device index -> last event time read
        self._handle_of: dict[int, int] = {}  # device index -> partition 0's handle
        self._build = ctypes.create_string_buffer(b"0")
        self.faults = Faults()
        self.calls: Counter = Counter()
        self.calls_by_device: Counter = Counter()
        self.library_missing = False
        software = world.scenario.amdsmi
        self.rocm_version = software.rocm  # what librocm-core's getROCmVersion answers
        self.library_version = software.library  # amdsmi_get_lib_version
        self.violation_latency = 0.1
        self.throughput_latency = 1.0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        symbol = self._symbols.get(name)
        if symbol is None:
            fn = getattr(type(self), "c_" + name, None)
            symbol = self._symbols[name] = _Symbol(
                self, name, fn.__get__(self) if fn is not None else None)
        return symbol

    @classmethod
    def api_functions(cls) -> list[str]:
        return sorted(n[2:] for n in vars(cls) if n.startswith("c_"))

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _err(code: int) -> Exception:
        return _Status(code)

    def _missing_error(self, name: str) -> int:
        return DRIVER_NOT_LOADED if name == "amdsmi_init" else NOT_INIT

    def _device_of(self, name: str, args: tuple) -> int | None:
        if args and isinstance(args[0], ctypes.c_void_p):
            t = self._targets.get(args[0].value or 0)
            return t.index if t is not None else None
        return None

    def _target(self, handle: Any) -> _Target:
        target = self._targets.get(getattr(handle, "value", None) or 0)
        if target is None or target.init != self._init_serial:
            raise _Status(NOT_INIT if target is not None else NOT_FOUND)
        t = self._t()
        if target.dev.lost_at(t) or target.gen != target.dev.generation_at(t):
            raise _Status(NOT_FOUND)
        return target

    def _device_wide(self, handle: Any, feature: str | None = None) -> tuple[_Target, bool]:
        """The target, and whether its device-wide sensors mean anything (partition 0)."""
        target = self._target(handle)
        if feature is not None and feature in target.dev.spec.unsupported:
            raise _Status(NOT_SUPPORTED)
        return target, not target.partition

    @staticmethod
    def _cdna(dev: SimDevice) -> bool:
        return dev.spec.architecture in _CDNA

    # -- library ---------------------------------------------------------------------------

    def c_amdsmi_init(self, flag: Any) -> None:
        self._init_count += 1

    def c_amdsmi_shut_down(self) -> None:
        self._init_count = max(0, self._init_count - 1)
        if self._init_count == 0:
            self._init_serial += 1
            self._notify.clear()

    def c_amdsmi_get_lib_version(self, version: Any) -> None:
        v = _obj(version)
        v.major, v.minor, v.release = (int(x) for x in self.library_version.split(".")[:3])
        v.build = ctypes.cast(self._build, ctypes.POINTER(ctypes.c_char))

    def _handles(self) -> list[list[int]]:
        """The processor handles of each live GPU (one per partition)."""
        t = self._t()
        out = []
        with self._lock:
            for index, dev in enumerate(self._devices):
                if dev.lost_at(t):
                    continue
                parts: list[int | None] = (list(range(len(dev.spec.instances)))
                                           if dev.spec.partition and dev.spec.instances
                                           else [None])
                row = []
                for p in parts:
                    key = (index, p, dev.generation_at(t), self._init_serial)
                    value = self._values.get(key)
                    if value is None:  # a new handle per device incarnation and init
                        value = self._values[key] = self._next_handle
                        self._next_handle += 0x10
                        self._targets[value] = _Target(dev, index, p, key[2], key[3])
                    row.append(value)
                self._handle_of[index] = row[0]
                out.append(row)
        return out

    @staticmethod
    def _fill(count: Any, array: Any, values: list[int]) -> None:
        n = _obj(count)
        if array:  # a NULL pointer asks for the count only
            for i, v in enumerate(values[:n.value]):
                array[i] = v
        n.value = len(values) if not array else min(n.value, len(values))

    def c_amdsmi_get_socket_handles(self, count: Any, array: Any) -> None:
        """One socket per GPU, its partitions the processors on it (socket handles are
        the first processor handle + 1)."""
        self._fill(count, array, [row[0] + 1 for row in self._handles()])

    def c_amdsmi_get_processor_handles(self, socket: Any, count: Any, array: Any) -> None:
        value = getattr(socket, "value", None) or 0
        for row in self._handles():
            if row[0] + 1 == value:
                self._fill(count, array, row)
                return
        raise _Status(NOT_FOUND)

    def c_amdsmi_get_processor_type(self, handle: Any, kind: Any) -> None:
        self._target(handle)
        _obj(kind).value = 1  # AMDSMI_PROCESSOR_TYPE_AMD_GPU

    # -- identity ----------------------------------------------------------------------------

    def c_amdsmi_get_gpu_device_bdf(self, handle: Any, bdf: Any) -> None:
        target = self._target(handle)
        domain, bus, rest = target.dev.pci_bus_id.split(":")
        device = rest.split(".")[0]
        s = _obj(bdf).struct_amdsmi_bdf_t
        s.domain_number, s.bus_number = int(domain, 16), int(bus, 16)
        s.device_number, s.function_number = int(device, 16), target.partition or 0

    def c_amdsmi_get_gpu_device_uuid(self, handle: Any, length: Any, buf: Any) -> None:
        """As the library's uuid_gen(serial, device_id, 0xff): every partition of a GPU
        answers the GPU's UUID, and a part without a serial number (Radeon) one made of its
        device id alone, the same on every card of the model."""
        target = self._target(handle)
        uuid = target.dev.uuid if self._cdna(target.dev) \
            else "00ff7448-0000-1000-8000-000000000000"  # a serial-less W7900 (0x7448)
        buf.value = uuid.encode()

    def c_amdsmi_get_gpu_asic_info(self, handle: Any, info: Any) -> None:
        target = self._target(handle)
        dev, cdna = target.dev, self._cdna(target.dev)
        parts = max(1, len(dev.spec.instances)) if dev.spec.partition else 1
        serial = int.from_bytes(dev.spec.serial.encode()[-8:], "big")
        a = _obj(info)
        a.market_name = dev.spec.model.encode()
        a.vendor_id, a.subvendor_id = 0x1002, 0x1002
        a.vendor_name = b"Advanced Micro Devices, Inc. [AMD/ATI]"
        a.device_id = 0x74A1 if cdna else 0x7448
        a.rev_id = 0
        a.asic_serial = f"{serial:016X}".encode()
        a.oam_id = target.index if cdna else U32
        a.num_of_compute_units = (304 // parts) if cdna else 96
        a.target_graphics_version = 0x942 if cdna else 0x1100
        a.subsystem_id = 0x74A1 if cdna else 0x0E0D

    def c_amdsmi_get_gpu_driver_info(self, handle: Any, info: Any) -> None:
        self._target(handle)
        d = _obj(info)
        d.driver_name, d.driver_version = b"amdgpu", b"6.12.12-sim"
        d.driver_date = b"2015/01/01 00:00"

    def c_amdsmi_get_gpu_vbios_info(self, handle: Any, info: Any) -> None:
        self._target(handle)
        v = _obj(info)
        v.name, v.build_date = b"SIM VBIOS", b"2025/01/01 00:00"
        v.part_number, v.version = b"113-SIM-000", b"022.040.003.043.000001"

    def c_amdsmi_get_gpu_board_info(self, handle: Any, info: Any) -> None:
        target = self._target(handle)
        b = _obj(info)
        b.product_serial = target.dev.spec.serial.encode() if self._cdna(target.dev) else b""
        b.product_name = target.dev.spec.model.encode()
        b.manufacturer_name = b"AMD"

    def c_amdsmi_get_gpu_kfd_info(self, handle: Any, info: Any) -> None:
        target = self._target(handle)
        k = _obj(info)
        k.kfd_id, k.node_id = 1000 + target.index, target.index + 1
        k.current_partition_id = target.partition or 0

    def c_amdsmi_get_gpu_compute_partition(self, handle: Any, buf: Any, length: Any) -> None:
        target = self._target(handle)
        if not target.dev.spec.partition:
            raise _Status(NOT_SUPPORTED)
        buf.value = target.dev.spec.partition.encode()

    def c_amdsmi_get_gpu_memory_partition(self, handle: Any, buf: Any, length: Any) -> None:
        target = self._target(handle)
        if not self._cdna(target.dev):
            raise _Status(NOT_SUPPORTED)
        buf.value = target.dev.spec.memory_partition.encode()  # scenario knob, default NPS1

    def c_amdsmi_get_gpu_xcd_counter(self, handle: Any, count: Any) -> None:
        target = self._target(handle)
        if not self._cdna(target.dev):
            raise _Status(NOT_SUPPORTED)
        _obj(count).value = 8 // max(1, len(target.dev.spec.instances)) \
            if target.partition is not None else 8

    # -- thermal, power, clocks ------------------------------------------------------------

    def c_amdsmi_get_temp_metric(self, handle: Any, sensor: Any, metric: Any,
                                 out: Any) -> None:
        target, wide = self._device_wide(handle)
        sensor, metric = _value(sensor), _value(metric)  # EDGE 0, HOTSPOT 1, VRAM 2
        spec = target.dev.spec
        if sensor == 0 and (self._cdna(target.dev) or "edge_temperature" in spec.unsupported):
            raise _Status(NOT_SUPPORTED)
        if sensor not in (0, 1, 2):
            raise _Status(NOT_SUPPORTED)
        if not wide:
            _obj(out).value = 0
            return
        hot = 8.0 if sensor == 1 else 0.0
        if metric == 0:  # CURRENT
            s = target.dev.state(self._t())
            _obj(out).value = round(s.memory_temperature if sensor == 2
                                    else s.temperature + hot)
            return
        if sensor == 2:  # CRITICAL 5, EMERGENCY 7
            limits = {5: spec.max_operating_celsius + 10, 7: spec.max_operating_celsius + 15}
        else:
            limits = {5: spec.slowdown_celsius + hot, 7: spec.shutdown_celsius + hot}
        if metric not in limits:
            raise _Status(NOT_SUPPORTED)
        _obj(out).value = int(limits[metric])

    def c_amdsmi_get_power_info(self, handle: Any, info: Any) -> None:
        target, wide = self._device_wide(handle)
        watts = round(target.dev.state(self._t()).power_watts) if wide else 0
        cdna = self._cdna(target.dev)
        p = _obj(info)
        p.socket_power = watts
        # the library copies gpu_metrics' 16-bit fields: "no value" is 0xFFFF
        p.current_socket_power = watts if cdna else U16
        p.average_socket_power = U16 if cdna else watts
        p.gfx_voltage, p.soc_voltage = 850, 900
        p.mem_voltage = 1200 if cdna else U16
        p.power_limit = int(target.dev.spec.limit_watts)

    def c_amdsmi_get_power_cap_info(self, handle: Any, sensor: Any, info: Any) -> None:
        target, wide = self._device_wide(handle, "power_limit")
        cap = int(target.dev.spec.limit_watts * 1e6) if wide else 0
        spec = target.dev.spec
        c = _obj(info)
        c.power_cap = cap
        c.default_power_cap = int(spec.default_limit_watts * 1e6) if wide else 0
        c.max_power_cap = int(spec.max_watts * 1e6) if wide else 0
        c.min_power_cap = int(spec.min_limit_watts * 1e6) if wide else 0
        c.dpm_cap = 2100

    # -- fans: Instinct boards are passively cooled and answer NOT_SUPPORTED -----------------

    def _fan(self, handle: Any, sensor: Any) -> tuple[SimDevice, float]:
        target, _ = self._device_wide(handle, "fan")
        if not 0 <= _value(sensor) < target.dev.spec.fans:
            raise _Status(NOT_SUPPORTED)
        t = self._t()
        return target.dev, target.dev.state(t).fan

    def c_amdsmi_get_gpu_fan_speed(self, handle: Any, sensor: Any, out: Any) -> None:
        _, ratio = self._fan(handle, sensor)
        _obj(out).value = round(FAN_MAX * ratio)

    def c_amdsmi_get_gpu_fan_speed_max(self, handle: Any, sensor: Any, out: Any) -> None:
        self._fan(handle, sensor)
        _obj(out).value = FAN_MAX

    # -- XGMI ---------------------------------------------------------------------------------

    def c_amdsmi_get_gpu_xgmi_link_status(self, handle: Any, info: Any) -> None:
        target = self._target(handle)
        dev, t = target.dev, self._t()
        if not dev.spec.links.count:
            raise _Status(NOT_SUPPORTED)
        st = _obj(info)
        st.total_links = dev.spec.links.count
        for i in range(dev.spec.links.count):  # AMDSMI_XGMI_LINK_UP 1, _DOWN 0
            st.status[i] = 1 if dev.link_up(t, i) else 0

    def c_amdsmi_get_energy_count(self, handle: Any, acc: Any, resolution: Any,
                                  stamp: Any) -> None:
        target, wide = self._device_wide(handle, "energy")
        t = self._t()
        joules = target.dev.totals(t)["energy_j"] if wide else 0.0
        _obj(acc).value = int(joules / (ENERGY_RESOLUTION_UJ * 1e-6))
        _obj(resolution).value = ENERGY_RESOLUTION_UJ
        _obj(stamp).value = int(t * 1e9)

    def c_amdsmi_get_clock_info(self, handle: Any, clk_type: Any, info: Any) -> None:
        target, wide = self._device_wide(handle)
        s, spec = target.dev.state(self._t()), target.dev.spec
        # amdsmi_clk_type_t: GFX 0, SOC 3, MEM 4, VCLK0 6
        table = {0: (s.sm_hz / 1e6, spec.sm_max_hz / 1e6),
                 4: (s.memory_hz / 1e6, spec.memory_hz / 1e6), 3: (1143, 1143),
                 6: (1620 if s.utilization > 0 else 29, 1620)}
        clk = _value(clk_type)
        if clk not in table:
            raise _Status(NOT_SUPPORTED)
        current, maximum = table[clk]
        c = _obj(info)
        c.clk, c.min_clk, c.max_clk = int(current) if wide else 0, 100, int(maximum)
        c.clk_locked, c.clk_deep_sleep = 0, 0xFF

    # -- activity and metrics ----------------------------------------------------------------

    def _util(self, target: _Target, t: float) -> float:
        s = target.dev.state(t)
        if target.partition is not None:
            return s.instance_utilization[target.partition]
        return s.utilization

    def c_amdsmi_get_gpu_activity(self, handle: Any, info: Any) -> None:
        target = self._target(handle)
        if "utilization" in target.dev.spec.unsupported:
            raise _Status(NOT_SUPPORTED)
        util = self._util(target, self._t())
        cdna = self._cdna(target.dev)
        e = _obj(info)
        e.gfx_activity = round(util * 100)
        e.umc_activity = round(util * 45) if cdna else U16
        e.mm_activity = 0 if cdna else U16

    def _xcc_rows(self, target: _Target, t: float) -> list[list[int]]:
        rows = [[U32] * 8 for _ in range(8)]
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

    def _residency(self, dev: SimDevice, t: float) -> dict[str, int]:
        keys = ("accumulation_counter", "prochot_residency_acc", "ppt_residency_acc",
                "socket_thm_residency_acc", "vr_thm_residency_acc", "hbm_thm_residency_acc")
        if not self._cdna(dev) or "violation_status" in dev.spec.unsupported:
            return dict.fromkeys(keys, U64)
        tot = dev.totals(t)
        return {"accumulation_counter": int(t * 1000),
                "prochot_residency_acc": int(tot["thr_hw_slowdown"] * 1000),
                "ppt_residency_acc": int(tot["thr_power_cap"] * 1000),
                "socket_thm_residency_acc": int(tot["thr_sw_thermal"] * 1000),
                "vr_thm_residency_acc": 0, "hbm_thm_residency_acc": 0}

    def c_amdsmi_get_gpu_metrics_info(self, handle: Any, metrics: Any) -> None:
        """Fills amdsmi_gpu_metrics_t: every field all ones (no value) but those the
        device reports, as the library does when it translates the driver's table."""
        target = self._target(handle)
        m = _obj(metrics)
        if isinstance(m, ctypes._Pointer):  # ctypes.pointer(struct) passed
            m = m.contents
        ctypes.memset(ctypes.addressof(m), 0xFF, ctypes.sizeof(m))
        t = self._t()
        dev, cdna = target.dev, self._cdna(target.dev)
        s = dev.state(t)
        util = self._util(target, t)
        h = m.common_header
        h.structure_size, h.format_revision = 1256, 1
        h.content_revision = 6 if cdna else 3
        if not cdna:
            m.temperature_edge = int(s.temperature)
            m.average_socket_power = int(s.power_watts)
            if dev.spec.fans and "fan" not in dev.spec.unsupported:
                m.current_fan_speed = int(900 + 1500 * util)
        else:
            m.current_socket_power = int(s.power_watts)
            m.average_umc_activity = int(util * 45)
            for i in range(4):
                m.temperature_hbm[i] = int(s.memory_temperature) + i
                m.vcn_activity[i] = 0
            links = dev.spec.links
            if links.count:  # KB moved over each link since the driver loaded
                tot = dev.totals(t)
                m.xgmi_link_width, m.xgmi_link_speed = links.width, round(links.speed_gbps)
                for i in range(links.count):
                    m.xgmi_read_data_acc[i] = int(tot[f"link_rx_{i}"] / 1000)
                    m.xgmi_write_data_acc[i] = int(tot[f"link_tx_{i}"] / 1000)
                    m.xgmi_link_status[i] = 1 if dev.link_up(t, i) else 0
        m.temperature_hotspot = int(s.temperature + 8)
        m.temperature_mem = int(s.memory_temperature)
        m.average_gfx_activity = int(util * 100)
        m.energy_accumulator = int(dev.totals(t)["energy_j"] / (ENERGY_RESOLUTION_UJ * 1e-6))
        m.system_clock_counter = int(t * 1e9)
        m.current_gfxclk, m.current_uclk = int(s.sm_hz / 1e6), int(s.memory_hz / 1e6)
        mask = 0
        for reason, bit in _THROTTLE_BITS.items():
            if reason in s.throttle:
                mask |= 1 << bit
        m.throttle_status = 1 if mask else 0
        # MI300's SMU never fills indep_throttle_status: it reads all ones there (the
        # 64-bit "no value"), and throttling shows only in the residency accumulators
        m.indep_throttle_status = U64 if dev.spec.architecture == "cdna3" else mask
        m.pcie_link_width, m.pcie_link_speed = s.width, _MTS[s.generation] // 100
        m.num_partition = max(1, len(dev.spec.instances)) if dev.spec.partition else 1
        for p, row in enumerate(self._xcc_rows(target, t)):
            for x, v in enumerate(row):
                m.xcp_stats[p].gfx_busy_inst[x] = v
        replays = dev.replays(t) if "pcie_counters" not in dev.spec.unsupported else None
        if replays is not None and cdna:
            m.pcie_replay_count_acc, m.pcie_l0_to_recov_count_acc = replays, replays // 10
            m.pcie_nak_sent_count_acc, m.pcie_nak_rcvd_count_acc = replays // 4, replays // 5
        for key, v in self._residency(dev, t).items():
            setattr(m, key, v)
        if dev.spec.architecture in _METRICS_V15:
            self._v15(target, m, t)

    def _v15(self, target: _Target, m: Any, t: float) -> None:
        """MI300's newer gpu_metrics fields. pcie_bandwidth_acc adds the link's GB/s (both
        ways) at each accumulation tick (accumulation_counter counts milliseconds here), so
        it grows by bytes / 1e6; the xcp_stats host-limit accumulators count the ticks the
        gfx clock sat below the host's limit, per XCC of each partition (power: the power
        cap; thermal: firmware thermal slowdown; total: either, their sum here)."""
        dev = target.dev
        s, tot = dev.state(t), dev.totals(t)
        m.pcie_bandwidth_acc = int((tot["pcie_tx"] + tot["pcie_rx"]) / 1e6)
        link = pcie_link_bytes_per_second(s.generation, s.width) or 0.0
        m.pcie_bandwidth_inst = round(s.utilization * 0.28 * link / 1e9)
        if "violation_status" in dev.spec.unsupported:
            return
        ppt, thm = int(tot["thr_power_cap"] * 1000), int(tot["thr_sw_thermal"] * 1000)
        parts = len(dev.spec.instances) if dev.spec.partition and dev.spec.instances else 1
        for p in range(parts):
            row = m.xcp_stats[p]
            for x in range(8 // parts):
                row.gfx_below_host_limit_ppt_acc[x] = ppt
                row.gfx_below_host_limit_thm_acc[x] = thm
                row.gfx_below_host_limit_total_acc[x] = ppt + thm

    # -- memory ------------------------------------------------------------------------------

    def _vram(self, target: _Target, t: float) -> tuple[int, int]:
        dev = target.dev
        s = dev.state(t)
        if target.partition is not None:  # own share or the whole pool: world.py decides
            return dev.partition_memory(t, target.partition)
        return int(dev.spec.memory), int(min(dev.spec.memory, s.used + dev.spec.reserved))

    def _memory(self, handle: Any, mem_type: Any) -> tuple[int, int]:
        target = self._target(handle)
        kind = _value(mem_type)  # VRAM 0, VIS_VRAM 1, GTT 2
        total, used = self._vram(target, self._t())
        if kind == 0:
            return total, used
        if kind == 1:
            vis = total if self._cdna(target.dev) else 256 * MIB
            return vis, int(min(vis, 0.01 * used + 16 * MIB))
        if "gtt" in target.dev.spec.unsupported:
            raise _Status(NOT_SUPPORTED)
        return 256 * 1024 * MIB, int(0.02 * used + 64 * MIB)

    def c_amdsmi_get_gpu_memory_total(self, handle: Any, mem_type: Any, out: Any) -> None:
        _obj(out).value = self._memory(handle, mem_type)[0]

    def c_amdsmi_get_gpu_memory_usage(self, handle: Any, mem_type: Any, out: Any) -> None:
        _obj(out).value = self._memory(handle, mem_type)[1]

    def c_amdsmi_get_gpu_vram_usage(self, handle: Any, info: Any) -> None:
        total, used = self._vram(self._target(handle), self._t())
        v = _obj(info)
        v.vram_total, v.vram_used = total // MIB, used // MIB

    # -- PCIe ------------------------------------------------------------------------------

    def c_amdsmi_get_pcie_info(self, handle: Any, info: Any) -> None:
        target, wide = self._device_wide(handle)
        dev, t = target.dev, self._t()
        s, spec = dev.state(t), dev.spec
        counters = "pcie_counters" not in spec.unsupported
        replays = dev.replays(t) if counters and wide else 0
        p = _obj(info)
        st, me = p.pcie_static, p.pcie_metric
        st.max_pcie_width, st.max_pcie_speed = spec.max_width, _MTS[spec.max_generation]
        st.pcie_interface_version = st.max_pcie_interface_version = spec.max_generation
        st.slot_type = 1 if self._cdna(dev) else 2  # OAM, CEM (amdsmi_card_form_factor_t)
        me.pcie_width = s.width if wide else 0
        me.pcie_speed = _MTS[s.generation] if wide else 0
        me.pcie_bandwidth = U32
        for field, v in (("pcie_replay_count", replays),
                         ("pcie_l0_to_recovery_count", replays // 10),
                         ("pcie_replay_roll_over_count", 0),
                         ("pcie_nak_sent_count", replays // 4),
                         ("pcie_nak_received_count", replays // 5)):
            setattr(me, field, v if counters else U64)
        me.pcie_lc_perf_other_end_recovery_count = 0 if counters else U32

    def c_amdsmi_get_gpu_pci_throughput(self, handle: Any, sent: Any, received: Any,
                                        max_pkt: Any) -> None:
        target, wide = self._device_wide(handle, "pcie_throughput")
        time.sleep(self.throughput_latency)  # the driver's pcie_bw sleeps a second
        s = target.dev.state(self._t())
        link = pcie_link_bytes_per_second(s.generation, s.width) or 0.0
        _obj(sent).value = int(s.utilization * 0.10 * link) if wide else 0
        _obj(received).value = int(s.utilization * 0.18 * link) if wide else 0
        _obj(max_pkt).value = 256

    def c_amdsmi_get_violation_status(self, handle: Any, info: Any) -> None:
        target, _ = self._device_wide(handle, "violation_status")
        if not self._cdna(target.dev):
            raise _Status(NOT_SUPPORTED)
        time.sleep(self.violation_latency)  # two firmware samples 100 ms apart
        v = _obj(info)
        ctypes.memset(ctypes.addressof(v), 0xFF, ctypes.sizeof(v))
        t = self._t()
        r = self._residency(target.dev, t)
        throttle = target.dev.state(t).throttle
        v.reference_timestamp = int(time.time() * 1e6)
        v.violation_timestamp = int(t * 1e9)
        v.acc_counter = r["accumulation_counter"]
        for name, key, reason in (("prochot_thrm", "prochot_residency_acc", "hw_slowdown"),
                                  ("ppt_pwr", "ppt_residency_acc", "power_cap"),
                                  ("socket_thrm", "socket_thm_residency_acc", "sw_thermal"),
                                  ("vr_thrm", "vr_thm_residency_acc", None),
                                  ("hbm_thrm", "hbm_thm_residency_acc", None)):
            active = reason is not None and reason in throttle
            setattr(v, f"acc_{name}", r[key])
            setattr(v, f"per_{name}", 100 if active else 0)
            setattr(v, f"active_{name}", int(active))
        # the per-XCP "below host limit" and low-utilization figures: MI300 (gpu_metrics
        # 1.6) has none, so they stay all ones, as the scalar gfx_clk_below_host_limit

    # -- processes -----------------------------------------------------------------------------

    def _listed(self, t: float) -> list[tuple[int, Any, float]]:
        """(device index, process, when its counters stopped) of every KFD process: the
        live ones, and the exited ones while any process is still alive (7.0.2 forgets
        exited processes only once the list has run empty)."""
        for dev in self._devices:
            self._world.sync_processes(t, dev)
        out, alive = [], set()
        for index, dev in enumerate(self._devices):
            for p in dev.state(t).processes:
                out.append((index, p, t))
                alive.add(p.pid)
        if not alive:
            return out
        for index, dev in enumerate(self._devices):
            local = dev._cycle(t)[1]
            for spec in dev.spec.processes:
                if spec.end is not None and spec.end <= local:
                    last = t - (local - spec.end) - 1e-3  # as it was just before it exited
                    out += [(index, q, last) for q in dev.processes_at(last)
                            if q.spec is spec and q.pid not in alive]
        return out

    def c_amdsmi_get_gpu_process_list(self, handle: Any, count: Any, array: Any) -> None:
        target = self._target(handle)
        t = self._t()
        dev = target.dev
        engine = "process_engine_time" not in dev.spec.unsupported
        rows = []
        for index, p, seen in self._listed(t):
            mine = index == target.index and p.memory > 0 and not (
                dev.spec.partition and dev.spec.instances
                and p.spec.instance != target.partition)
            vram, gtt = (int(p.memory), 2 * MIB) if mine else (0, 0)
            gfx = int(p.utilization * max(0.0, seen - p.started) * 1e9) \
                if mine and engine else 0
            rows.append((p.spec.name[:15], p.pid, vram, gtt, gfx,
                         int(p.utilization * 38) if mine and self._cdna(dev) else 0))
        if self._cdna(dev):  # the caller opened /dev/kfd: listed as a KFD process
            rows.append(("python3", os.getpid(), 0, 0, 0, 0))
        n = _obj(count)
        for i, (name, pid, vram, gtt, gfx, cu) in enumerate(rows[:n.value]):
            a = array[i]
            a.name, a.pid, a.mem = name.encode(), pid, vram + gtt
            a.engine_usage.gfx, a.engine_usage.enc = gfx, 0
            a.memory_usage.gtt_mem, a.memory_usage.cpu_mem = gtt, 0
            a.memory_usage.vram_mem = vram
            a.cu_occupancy = cu if self._cdna(dev) else U32
        n.value = min(n.value, len(rows))

    # -- errors ------------------------------------------------------------------------------

    def _ecc_device(self, handle: Any) -> tuple[_Target, bool]:
        target, wide = self._device_wide(handle, "ecc")
        if not target.dev.spec.ecc or not self._cdna(target.dev):
            raise _Status(NOT_SUPPORTED)
        return target, wide

    def c_amdsmi_get_gpu_ecc_enabled(self, handle: Any, blocks: Any) -> None:
        self._ecc_device(handle)
        _obj(blocks).value = 1 | 2 | 4 | 8 | 128  # UMC SDMA GFX MMHUB XGMI_WAFL

    def c_amdsmi_get_gpu_total_ecc_count(self, handle: Any, info: Any) -> None:
        target, wide = self._ecc_device(handle)
        e = _obj(info)
        e.correctable_count, e.uncorrectable_count = target.dev.ecc(self._t()) if wide \
            else (0, 0)
        e.deferred_count = 0

    def c_amdsmi_get_gpu_ecc_count(self, handle: Any, block: Any, info: Any) -> None:
        target, wide = self._ecc_device(handle)
        corrected, uncorrected = target.dev.ecc(self._t()) if wide else (0, 0)
        umc = _value(block) == 1
        e = _obj(info)
        e.correctable_count = corrected if umc else 0
        e.uncorrectable_count = uncorrected if umc else 0
        e.deferred_count = 0

    def c_amdsmi_get_gpu_bad_page_info(self, handle: Any, count: Any, array: Any) -> None:
        target, _ = self._device_wide(handle, "remapped_rows")
        if not self._cdna(target.dev):
            raise _Status(NOT_SUPPORTED)
        _, unc, pending = target.dev.remapped_rows(self._t())
        pages = [(0x10000 * (i + 1), 0) for i in range(unc)]
        if pending:
            pages.append((0xF0000, 1))
        n = _obj(count)
        if array:
            for i, (address, status) in enumerate(pages[:n.value]):
                array[i].page_address, array[i].page_size = address, 4096
                array[i].status = status
        n.value = len(pages) if not array else min(n.value, len(pages))

    def c_amdsmi_get_gpu_bad_page_threshold(self, handle: Any, out: Any) -> None:
        self._device_wide(handle, "remapped_rows")
        _obj(out).value = 128

    # -- events ------------------------------------------------------------------------------

    def c_amdsmi_init_gpu_event_notification(self, handle: Any) -> None:
        target = self._target(handle)
        if "xid_events" in target.dev.spec.unsupported:
            raise _Status(NOT_SUPPORTED)
        self._notify.setdefault(target.index, 0)
        self._since[target.index] = self._t()

    def c_amdsmi_set_gpu_event_notification_mask(self, handle: Any, mask: Any) -> None:
        target = self._target(handle)
        if target.index not in self._notify:
            raise _Status(NOT_INIT)
        self._notify[target.index] = _value(mask)

    def c_amdsmi_stop_gpu_event_notification(self, handle: Any) -> None:
        target = self._target(handle)
        self._notify.pop(target.index, None)

    def c_amdsmi_get_gpu_event_notification(self, timeout_ms: Any, count: Any,
                                            array: Any) -> None:
        """Events of every GPU with notification on, waiting up to ``timeout_ms``."""
        end = time.monotonic() + max(0, _value(timeout_ms)) / 1000.0
        n = _obj(count)
        while True:
            now = self._t()
            found = []
            for index, mask in list(self._notify.items()):
                dev = self._devices[index]
                for at, kind, msg in self._events(dev, self._since.get(index, now), now):
                    if mask & (1 << (_EVENTS[kind] - 1)):
                        found.append((at, index, kind, msg))
            found.sort()
            if found:
                found = found[:n.value]
                for i, (at, index, kind, msg) in enumerate(found):
                    array[i].processor_handle = self._handle_of.get(index)
                    array[i].event, array[i].message = _EVENTS[kind], msg.encode()
                    self._since[index] = max(self._since.get(index, at), at)
                n.value = len(found)
                return
            if time.monotonic() >= end:
                for index in self._notify:
                    self._since[index] = now
                n.value = 0
                raise _Status(NO_DATA)
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

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


# -- the real package, bound to a simulated library -----------------------------------------

_MODULES = ("_version", "amdsmi_wrapper", "amdsmi_exception", "amdsmi_interface")
_CODE: dict[str, types.CodeType] = {}
_CODE_LOCK = threading.Lock()
_SERIAL = itertools.count()


def package_dir() -> Path | None:
    """Where the installed amdsmi package lives (found without importing it)."""
    spec = importlib.util.find_spec("amdsmi") if "amdsmi" not in sys.modules else \
        sys.modules["amdsmi"].__spec__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _code(directory: Path, name: str) -> types.CodeType:
    path = directory / f"{name}.py"
    with _CODE_LOCK:
        code = _CODE.get(str(path))
        if code is None:
            code = _CODE[str(path)] = compile(path.read_bytes(), str(path), "exec")
        return code


class _Ctypes(types.ModuleType):
    """ctypes as the copy sees it: the real module, but CDLL opens the simulated
    libamd_smi.so and librocm-core.so."""

    def __init__(self, lib: SimLibAmdSmi) -> None:
        super().__init__("ctypes")
        self._sim_lib = lib

    def __getattr__(self, name: str) -> Any:
        return getattr(ctypes, name)

    def CDLL(self, location: Any, *args: Any, **kwargs: Any) -> Any:
        where = str(location)
        if where.endswith("libamd_smi.so"):
            return self._sim_lib
        if where.endswith("librocm-core.so"):
            return SimRocmCore(self._sim_lib)
        raise OSError(f"{where}: cannot open shared object file: No such file or directory")


def load_amdsmi(lib: SimLibAmdSmi) -> types.ModuleType:
    """A private copy of the installed amdsmi package whose C library is ``lib``."""
    directory = package_dir()
    if directory is None:
        raise ImportError("the amdsmi package (amdsmi>=7.0) is needed for the simulation")
    name = f"_gpuprobe_sim_amdsmi_{next(_SERIAL)}"
    proxy = _Ctypes(lib)

    def importer(what: str, globals_: Any = None, locals_: Any = None,
                 fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and what == "ctypes":
            return proxy
        return builtins.__import__(what, globals_, locals_, fromlist, level)

    scope = dict(vars(builtins), __import__=importer)
    package = types.ModuleType(name)
    package.__path__ = [str(directory)]
    package.__package__ = name
    package.__file__ = str(directory / "__init__.py")
    made = [name]
    sys.modules[name] = package
    try:
        for sub in _MODULES:
            module = types.ModuleType(f"{name}.{sub}")
            module.__package__, module.__file__ = name, str(directory / f"{sub}.py")
            module.__dict__["__builtins__"] = scope
            sys.modules[module.__name__] = module
            made.append(module.__name__)
            setattr(package, sub, module)
            exec(_code(directory, sub), module.__dict__)
        package.__dict__["__builtins__"] = scope
        exec(_code(directory, "__init__"), package.__dict__)
    finally:  # the copy holds its modules itself; nothing stays in sys.modules
        for made_name in made:
            sys.modules.pop(made_name, None)
    return package
