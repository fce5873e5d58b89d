"""HIP through ctypes on ``libamdhip64.so`` and ``libhiprtc.so``, for probe children only.

The AMD counterpart of ``cuda.py``: the same PCIe and launch measurements. HIP has no PTX:
the kernels below are compiled at run time with hipRTC for the GPU in hand (ROCm's device
libraries must be on the host). Enum values of ``hipDeviceAttribute_t`` have moved between
ROCm releases, so none is used: the compute-unit count comes from the parent (amdsmi), and
the rate of ``wall_clock64()`` is measured against the host clock.

No AMD GPU was available to this project: this module is checked for its signatures only.
"""

from __future__ import annotations

import ctypes as C
import statistics
import time
from collections.abc import Callable
from typing import Any, cast

from gpuprobe.probes.active.kernels.common import analyse_launch

P = C.POINTER
hipError_t = C.c_int
ptr = C.c_void_p

SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "hipInit": (hipError_t, [C.c_uint]),
    "hipGetDeviceCount": (hipError_t, [P(C.c_int)]),
    "hipSetDevice": (hipError_t, [C.c_int]),
    "hipSetDeviceFlags": (hipError_t, [C.c_uint]),
    "hipDeviceSynchronize": (hipError_t, []),
    "hipHostMalloc": (hipError_t, [P(ptr), C.c_size_t, C.c_uint]),
    "hipHostFree": (hipError_t, [ptr]),
    "hipMalloc": (hipError_t, [P(ptr), C.c_size_t]),
    "hipFree": (hipError_t, [ptr]),
    "hipMemset": (hipError_t, [ptr, C.c_int, C.c_size_t]),
    "hipMemcpyHtoDAsync": (hipError_t, [ptr, ptr, C.c_size_t, ptr]),
    "hipMemcpyDtoHAsync": (hipError_t, [ptr, ptr, C.c_size_t, ptr]),
    "hipMemcpyDtoH": (hipError_t, [ptr, ptr, C.c_size_t]),
    "hipStreamCreateWithFlags": (hipError_t, [P(ptr), C.c_uint]),
    "hipStreamDestroy": (hipError_t, [ptr]),
    "hipStreamSynchronize": (hipError_t, [ptr]),
    "hipEventCreate": (hipError_t, [P(ptr)]),
    "hipEventDestroy": (hipError_t, [ptr]),
    "hipEventRecord": (hipError_t, [ptr, ptr]),
    "hipEventSynchronize": (hipError_t, [ptr]),
    "hipEventElapsedTime": (hipError_t, [P(C.c_float), ptr, ptr]),
    "hipModuleLoadData": (hipError_t, [P(ptr), ptr]),
    "hipModuleGetFunction": (hipError_t, [P(ptr), ptr, C.c_char_p]),
    "hipModuleUnload": (hipError_t, [ptr]),
    "hipModuleLaunchKernel": (hipError_t, [ptr, C.c_uint, C.c_uint, C.c_uint, C.c_uint,
                                           C.c_uint, C.c_uint, C.c_uint, ptr, P(ptr), P(ptr)]),
    "hipGetErrorName": (C.c_char_p, [hipError_t]),
}
RTC_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "hiprtcCreateProgram": (C.c_int, [P(ptr), C.c_char_p, C.c_char_p, C.c_int,
                                      P(C.c_char_p), P(C.c_char_p)]),
    "hiprtcCompileProgram": (C.c_int, [ptr, C.c_int, P(C.c_char_p)]),
    "hiprtcGetProgramLogSize": (C.c_int, [ptr, P(C.c_size_t)]),
    "hiprtcGetProgramLog": (C.c_int, [ptr, C.c_char_p]),
    "hiprtcGetCodeSize": (C.c_int, [ptr, P(C.c_size_t)]),
    "hiprtcGetCode": (C.c_int, [ptr, C.c_char_p]),
    "hiprtcDestroyProgram": (C.c_int, [P(ptr)]),
}

HIP_DEVICE_SCHEDULE_BLOCKING_SYNC = 0x4
HIP_HOST_MALLOC_PORTABLE = 0x1
HIP_STREAM_NON_BLOCKING = 0x1

KERNELS = r"""
extern "C" __global__ void gpuprobe_stamp(unsigned long long* out) {
    out[0] = wall_clock64();
}

// One wavefront per block: lane 0 records when the block started and where it landed,
// then spins so that the blocks of the grid are resident together.
extern "C" __global__ void gpuprobe_launch(unsigned long long* out, unsigned long long spin) {
    if (threadIdx.x != 0) return;
    unsigned long long t = wall_clock64();
    out[2 * blockIdx.x] = t;
    out[2 * blockIdx.x + 1] = __smid();
    while (wall_clock64() - t < spin) {}
}
"""


class HipError(RuntimeError):
    pass


def _load(path: str, table: dict[str, tuple[Any, list[Any]]]) -> dict[str, Any]:
    try:
        lib = C.CDLL(path)
    except OSError as e:
        raise HipError(f"cannot load {path}: {e}") from None
    fns = {}
    for name, (restype, argtypes) in table.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
        fns[name] = f
    return fns


class Hip:
    def __init__(self, runtime: str = "libamdhip64.so", rtc: str = "libhiprtc.so") -> None:
        self.fn = _load(runtime, SIGNATURES)
        self._rtc_path = rtc
        self._rtc: dict[str, Any] | None = None

    def __call__(self, name: str, *args: Any) -> None:
        rc = self.fn[name](*args)
        if rc != 0:
            err = self.fn["hipGetErrorName"](rc)
            raise HipError(f"{name}: {err.decode() if err else rc}")

    def rtc(self) -> dict[str, Any]:
        if self._rtc is None:
            self._rtc = _load(self._rtc_path, RTC_SIGNATURES)
        return self._rtc


class HipProbeDevice:
    """Device 0 of this process (the parent sets HIP_VISIBLE_DEVICES to one GPU)."""

    def __init__(self, hip: Hip | None = None) -> None:
        self.hip = hip or Hip()
        self.opened = 0.0
        self.held = 0.0

    def open(self) -> HipProbeDevice:
        h = self.hip
        h("hipInit", 0)
        count = C.c_int()
        h("hipGetDeviceCount", C.byref(count))
        if count.value != 1:
            raise HipError(f"expected exactly one visible GPU, found {count.value}")
        self.opened = time.monotonic()
        h("hipSetDeviceFlags", HIP_DEVICE_SCHEDULE_BLOCKING_SYNC)
        h("hipSetDevice", 0)
        return self

    def close(self) -> None:
        if self.opened and not self.held:
            self.hip("hipDeviceSynchronize")
            self.held = time.monotonic() - self.opened


def pcie(d: HipProbeDevice, size: int, copies: int, repetitions: int,
         progress: Callable[[str], None], link: Callable[[], dict | None]) -> dict:
    h = d.hip
    host, dev = ptr(), ptr()
    stream, start, stop = ptr(), ptr(), ptr()
    h("hipHostMalloc", C.byref(host), size, HIP_HOST_MALLOC_PORTABLE)
    try:
        h("hipMalloc", C.byref(dev), size)
        C.memset(host, 0x5A, size)
        h("hipStreamCreateWithFlags", C.byref(stream), HIP_STREAM_NON_BLOCKING)
        h("hipEventCreate", C.byref(start))
        h("hipEventCreate", C.byref(stop))

        def timed(name: str, dst: ptr, src: ptr) -> float:
            h("hipEventRecord", start, stream)
            for _ in range(copies):
                h(name, dst, src, size, stream)
            h("hipEventRecord", stop, stream)
            h("hipEventSynchronize", stop)
            ms = C.c_float()
            h("hipEventElapsedTime", C.byref(ms), start, stop)
            return size * copies / (ms.value / 1000.0)

        progress("warm-up")
        h("hipMemcpyHtoDAsync", dev, host, size, stream)
        h("hipMemcpyDtoHAsync", host, dev, size, stream)
        h("hipStreamSynchronize", stream)
        links = [link()]
        rates: dict[str, list[float]] = {"host_to_device": [], "device_to_host": []}
        for rep in range(repetitions):
            rates["host_to_device"].append(timed("hipMemcpyHtoDAsync", dev, host))
            rates["device_to_host"].append(timed("hipMemcpyDtoHAsync", host, dev))
            progress(f"repetition {rep + 1}/{repetitions}: host to device "
                     f"{rates['host_to_device'][-1] / 1e9:.1f} GB/s, device to host "
                     f"{rates['device_to_host'][-1] / 1e9:.1f} GB/s")
            if rep == 0:
                links.append(link())
    finally:
        for name, handle in (("hipEventDestroy", start), ("hipEventDestroy", stop),
                             ("hipStreamDestroy", stream), ("hipFree", dev)):
            if handle.value:
                h(name, handle)
        h("hipHostFree", host)
    seen = [x for x in links if x and x.get("generation") and x.get("width")]
    return {
        "host_to_device_bytes_per_second": statistics.median(rates["host_to_device"]),
        "device_to_host_bytes_per_second": statistics.median(rates["device_to_host"]),
        "samples": rates,
        "link": max(seen, key=lambda x: (x["generation"], x["width"]), default=None),
    }


def compile_kernels(d: HipProbeDevice, arch: str | None) -> bytes:
    rtc = d.hip.rtc()
    prog = ptr()
    if rtc["hiprtcCreateProgram"](C.byref(prog), KERNELS.encode(), b"gpuprobe.hip", 0,
                                  None, None):
        raise HipError("hiprtcCreateProgram failed")
    try:
        opts = [f"--offload-arch={arch}".encode()] if arch else []
        arr = (C.c_char_p * len(opts))(*opts)
        if rtc["hiprtcCompileProgram"](prog, len(opts), arr):
            n = C.c_size_t()
            rtc["hiprtcGetProgramLogSize"](prog, C.byref(n))
            log = C.create_string_buffer(n.value + 1)
            rtc["hiprtcGetProgramLog"](prog, log)
            raise HipError(f"hipRTC: {log.value.decode(errors='replace').strip()}")
        n = C.c_size_t()
        rtc["hiprtcGetCodeSize"](prog, C.byref(n))
        code = C.create_string_buffer(n.value)
        rtc["hiprtcGetCode"](prog, code)
        return code.raw
    finally:
        rtc["hiprtcDestroyProgram"](C.byref(prog))


def launch(d: HipProbeDevice, spin_ns: int, reach_bound_ns: int, calibrations: int,
           compute_units: int | None, arch: str | None,
           progress: Callable[[str], None]) -> dict:
    h = d.hip
    progress("compiling the probe kernels with hipRTC")
    code = compile_kernels(d, arch)
    module, stamp, probe = ptr(), ptr(), ptr()
    h("hipModuleLoadData", C.byref(module), code)
    buf, stream = ptr(), ptr()
    try:
        h("hipModuleGetFunction", C.byref(stamp), module, b"gpuprobe_stamp")
        h("hipModuleGetFunction", C.byref(probe), module, b"gpuprobe_launch")
        blocks = 2 * (compute_units or 64)
        h("hipMalloc", C.byref(buf), blocks * 16)
        h("hipStreamCreateWithFlags", C.byref(stream), HIP_STREAM_NON_BLOCKING)

        def go(f: ptr, grid: int, threads: int, args: list[int]) -> None:
            holders = [C.c_uint64(a) for a in args]
            params = (ptr * len(holders))(*[C.cast(C.byref(x), ptr) for x in holders])
            h("hipModuleLaunchKernel", f, grid, 1, 1, threads, 1, 1, 0, stream, params, None)

        def sample() -> tuple[int, int, int]:
            """(round trip ns, host mid ns, GPU ticks) of one stamp kernel."""
            t0 = time.monotonic_ns()
            go(stamp, 1, 1, [cast(int, buf.value)])  # set: hipMalloc raised otherwise
            h("hipStreamSynchronize", stream)
            t1 = time.monotonic_ns()
            v = C.c_uint64()
            h("hipMemcpyDtoH", C.byref(v), buf, 8)
            return t1 - t0, (t0 + t1) // 2, v.value

        progress("calibrating the GPU wall clock")
        first = min((sample() for _ in range(calibrations)), key=lambda s: s[0])
        time.sleep(0.05)
        last = min((sample() for _ in range(calibrations)), key=lambda s: s[0])
        ticks_per_ns = (last[2] - first[2]) / (last[1] - first[1])
        spin_ticks = int(spin_ns * ticks_per_ns)
        h("hipMemset", buf, 0, blocks * 16)
        progress(f"launching {blocks} blocks")
        t_launch = time.monotonic_ns()
        go(probe, blocks, 64, [cast(int, buf.value), spin_ticks])
        h("hipStreamSynchronize", stream)
        out = (C.c_uint64 * (blocks * 2))()
        h("hipMemcpyDtoH", out, buf, blocks * 16)
    finally:
        if stream.value:
            h("hipStreamDestroy", stream)
        if buf.value:
            h("hipFree", buf)
        h("hipModuleUnload", module)
    # Wall-clock ticks to host nanoseconds, anchored at the best calibration sample.
    to_ns = [int((out[2 * i] - last[2]) / ticks_per_ns) + last[1] for i in range(blocks)]
    return analyse_launch(to_ns, [out[2 * i + 1] for i in range(blocks)], compute_units,
                          t_launch, 0, last[0], reach_bound_ns)
