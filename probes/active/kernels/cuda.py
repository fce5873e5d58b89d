"""The CUDA driver API through ctypes, for probe child processes only.

Only the driver's own ``libcuda.so.1`` is needed: no toolkit, no CuPy or PyTorch. Kernels are
shipped as PTX (``probe.ptx``), which the driver compiles. cuda.h maps many public names to
versioned symbols (``cuMemAlloc`` is ``cuMemAlloc_v2``); calling the unversioned legacy
export from ctypes with 64-bit sizes would be wrong, so :data:`SIGNATURES` names the exact
symbols, and a test checks them against cuda.h where the toolkit is installed. The daemon
never imports this module: it runs in a child that exits when the probe is done, so the
daemon never holds a CUDA context.
"""

from __future__ import annotations

import ctypes as C
import statistics
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from gpuprobe.probes.active.kernels.common import analyse_launch

CUresult = C.c_int
CUdevice = C.c_int
CUdeviceptr = C.c_uint64
# One assignment each: mypy takes a chained assignment for variables, not type aliases.
CUcontext = C.c_void_p
CUmodule = C.c_void_p
CUfunction = C.c_void_p
CUstream = C.c_void_p
CUevent = C.c_void_p
P = C.POINTER


class CUuuid(C.Structure):
    _fields_ = [("bytes", C.c_ubyte * 16)]


# symbol -> argument types; every one returns CUresult. Where cuda.h maps a public name to a
# versioned symbol, the versioned symbol is what is named here.
SIGNATURES: dict[str, list[Any]] = {
    "cuInit": [C.c_uint],
    "cuDriverGetVersion": [P(C.c_int)],
    "cuDeviceGetCount": [P(C.c_int)],
    "cuDeviceGet": [P(CUdevice), C.c_int],
    "cuDeviceGetName": [C.c_char_p, C.c_int, CUdevice],
    "cuDeviceGetUuid_v2": [P(CUuuid), CUdevice],
    "cuDeviceGetAttribute": [P(C.c_int), C.c_int, CUdevice],
    "cuDevicePrimaryCtxSetFlags_v2": [CUdevice, C.c_uint],
    "cuDevicePrimaryCtxRetain": [P(CUcontext), CUdevice],
    "cuDevicePrimaryCtxRelease_v2": [CUdevice],
    "cuCtxSetCurrent": [CUcontext],
    "cuCtxSynchronize": [],
    "cuMemHostAlloc": [P(C.c_void_p), C.c_size_t, C.c_uint],
    "cuMemFreeHost": [C.c_void_p],
    "cuMemAlloc_v2": [P(CUdeviceptr), C.c_size_t],
    "cuMemFree_v2": [CUdeviceptr],
    "cuMemsetD8_v2": [CUdeviceptr, C.c_ubyte, C.c_size_t],
    "cuMemcpyHtoDAsync_v2": [CUdeviceptr, C.c_void_p, C.c_size_t, CUstream],
    "cuMemcpyDtoHAsync_v2": [C.c_void_p, CUdeviceptr, C.c_size_t, CUstream],
    "cuMemcpyDtoH_v2": [C.c_void_p, CUdeviceptr, C.c_size_t],
    "cuStreamCreate": [P(CUstream), C.c_uint],
    "cuStreamDestroy_v2": [CUstream],
    "cuStreamSynchronize": [CUstream],
    "cuStreamQuery": [CUstream],
    "cuEventCreate": [P(CUevent), C.c_uint],
    "cuEventDestroy_v2": [CUevent],
    "cuEventRecord": [CUevent, CUstream],
    "cuEventSynchronize": [CUevent],
    "cuEventElapsedTime_v2": [P(C.c_float), CUevent, CUevent],
    "cuModuleLoadDataEx": [P(CUmodule), C.c_void_p, C.c_uint, P(C.c_int), P(C.c_void_p)],
    "cuModuleGetFunction": [P(CUfunction), CUmodule, C.c_char_p],
    "cuModuleUnload": [CUmodule],
    "cuLaunchKernel": [CUfunction, C.c_uint, C.c_uint, C.c_uint, C.c_uint, C.c_uint,
                       C.c_uint, C.c_uint, CUstream, P(C.c_void_p), P(C.c_void_p)],
    "cuGetErrorName": [CUresult, P(C.c_char_p)],
}
# Symbols added after CUDA 11 and their older names, for older drivers.
FALLBACKS = {"cuEventElapsedTime_v2": "cuEventElapsedTime",
             "cuDeviceGetUuid_v2": "cuDeviceGetUuid"}

CU_CTX_SCHED_BLOCKING_SYNC = 0x4  # wait on events without spinning a CPU core
CU_MEMHOSTALLOC_PORTABLE = 0x1
CU_STREAM_NON_BLOCKING = 0x1
CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CUDA_ERROR_NOT_READY = 600
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6


class CudaError(RuntimeError):
    pass


class Cuda:
    """The loaded library, with every function typed from SIGNATURES."""

    def __init__(self, path: str = "libcuda.so.1") -> None:
        try:
            lib = C.CDLL(path)
        except OSError as e:
            raise CudaError(f"cannot load {path}: {e}") from None
        self.lib = lib
        self.fn: dict[str, Callable[..., int]] = {}
        for name, argtypes in SIGNATURES.items():
            symbol = name
            if not hasattr(lib, symbol) and name in FALLBACKS:
                symbol = FALLBACKS[name]
            f = getattr(lib, symbol)
            f.argtypes = argtypes
            f.restype = CUresult
            self.fn[name] = f

    def __call__(self, name: str, *args: Any) -> None:
        rc = self.fn[name](*args)
        if rc != 0:
            raise CudaError(f"{name}: {self.error_name(rc)}")

    def error_name(self, rc: int) -> str:
        s = C.c_char_p()
        if self.fn["cuGetErrorName"](rc, C.byref(s)) == 0 and s.value:
            return f"{s.value.decode()} ({rc})"
        return f"CUresult {rc}"


class CudaProbeDevice:
    """Device 0 of this process (the parent sets CUDA_VISIBLE_DEVICES to one GPU's UUID),
    its primary context held from open() to close(); ``held`` is how long that was."""

    def __init__(self, cuda: Cuda | None = None) -> None:
        self.cuda = cuda or Cuda()
        self.ctx = CUcontext()
        self.dev = CUdevice()
        self.opened = 0.0
        self.held = 0.0

    def open(self) -> CudaProbeDevice:
        cu = self.cuda
        cu("cuInit", 0)
        count = C.c_int()
        cu("cuDeviceGetCount", C.byref(count))
        if count.value != 1:
            raise CudaError(f"expected exactly one visible GPU, found {count.value}")
        cu("cuDeviceGet", C.byref(self.dev), 0)
        self.opened = time.monotonic()
        cu("cuDevicePrimaryCtxSetFlags_v2", self.dev, CU_CTX_SCHED_BLOCKING_SYNC)
        cu("cuDevicePrimaryCtxRetain", C.byref(self.ctx), self.dev)
        cu("cuCtxSetCurrent", self.ctx)
        return self

    def close(self) -> None:
        if self.ctx:
            self.cuda("cuCtxSynchronize")
            self.cuda("cuDevicePrimaryCtxRelease_v2", self.dev)
            self.ctx = CUcontext()
            self.held = time.monotonic() - self.opened

    def uuid(self) -> str:
        u = CUuuid()
        self.cuda("cuDeviceGetUuid_v2", C.byref(u), self.dev)
        h = bytes(u.bytes).hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def sm_count(self) -> int:
        v = C.c_int()
        self.cuda("cuDeviceGetAttribute", C.byref(v), CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                  self.dev)
        return v.value


def pcie(d: CudaProbeDevice, size: int, copies: int, repetitions: int,
         progress: Callable[[str], None], link: Callable[[], dict | None]) -> dict:
    """Host-to-device and device-to-host bandwidth on the copy engine, from pinned memory,
    timed with events: after a warm-up, ``copies`` copies per repetition, the median of the
    repetitions. ``link()`` reads the link state while it is trained up by the copies."""
    cu = d.cuda
    host = C.c_void_p()
    dptr = CUdeviceptr()
    stream, start, stop = CUstream(), CUevent(), CUevent()
    cu("cuMemHostAlloc", C.byref(host), size, CU_MEMHOSTALLOC_PORTABLE)
    try:
        cu("cuMemAlloc_v2", C.byref(dptr), size)
        C.memset(host, 0x5A, size)  # not zeros: real bytes cross the link either way
        cu("cuStreamCreate", C.byref(stream), CU_STREAM_NON_BLOCKING)
        cu("cuEventCreate", C.byref(start), 0)
        cu("cuEventCreate", C.byref(stop), 0)

        def h2d() -> None:
            cu("cuMemcpyHtoDAsync_v2", dptr, host, size, stream)

        def d2h() -> None:
            cu("cuMemcpyDtoHAsync_v2", host, dptr, size, stream)

        def timed(copy: Callable[[], None]) -> float:
            cu("cuEventRecord", start, stream)
            for _ in range(copies):
                copy()
            cu("cuEventRecord", stop, stream)
            cu("cuEventSynchronize", stop)
            ms = C.c_float()
            cu("cuEventElapsedTime_v2", C.byref(ms), start, stop)
            return size * copies / (ms.value / 1000.0)

        progress("warm-up")
        h2d()
        d2h()
        cu("cuStreamSynchronize", stream)
        links = [link()]
        rates: dict[str, list[float]] = {"host_to_device": [], "device_to_host": []}
        for rep in range(repetitions):
            for direction, copy in (("host_to_device", h2d), ("device_to_host", d2h)):
                rates[direction].append(timed(copy))
            progress(f"repetition {rep + 1}/{repetitions}: host to device "
                     f"{rates['host_to_device'][-1] / 1e9:.1f} GB/s, device to host "
                     f"{rates['device_to_host'][-1] / 1e9:.1f} GB/s")
            if rep == 0:
                links.append(link())
    finally:
        for name, handle in (("cuEventDestroy_v2", start), ("cuEventDestroy_v2", stop),
                             ("cuStreamDestroy_v2", stream)):
            if handle:
                cu(name, handle)
        if dptr.value:
            cu("cuMemFree_v2", dptr)
        cu("cuMemFreeHost", host)
    seen = [x for x in links if x and x.get("generation") and x.get("width")]
    best = max(seen, key=lambda x: (x["generation"], x["width"]), default=None)
    return {
        "host_to_device_bytes_per_second": statistics.median(rates["host_to_device"]),
        "device_to_host_bytes_per_second": statistics.median(rates["device_to_host"]),
        "samples": rates,
        "link": best,
    }


def load_ptx(d: CudaProbeDevice) -> CUmodule:
    ptx = resources.files(__package__).joinpath("probe.ptx").read_bytes() + b"\0"
    module = CUmodule()
    log = C.create_string_buffer(8192)
    options = (C.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
    values = (C.c_void_p * 2)(C.cast(log, C.c_void_p), C.c_void_p(len(log)))
    rc = d.cuda.fn["cuModuleLoadDataEx"](C.byref(module), ptx, 2, options, values)
    if rc != 0:
        raise CudaError(f"cuModuleLoadDataEx: {d.cuda.error_name(rc)}: "
                        f"{log.value.decode(errors='replace').strip()}")
    return module


def _function(d: CudaProbeDevice, module: CUmodule, name: str) -> CUfunction:
    f = CUfunction()
    d.cuda("cuModuleGetFunction", C.byref(f), module, name.encode())
    return f


def _launch(d: CudaProbeDevice, f: CUfunction, blocks: int, threads: int, args: list[Any],
            stream: CUstream) -> None:
    holders = [C.c_uint64(a) for a in args]
    params = (C.c_void_p * len(holders))(*[C.cast(C.byref(h), C.c_void_p) for h in holders])
    d.cuda("cuLaunchKernel", f, blocks, 1, 1, threads, 1, 1, 0, stream, params, None)


def _poll(d: CudaProbeDevice, stream: CUstream, limit_s: float = 0.05) -> None:
    """Wait for a stream by polling, for a short job; fall back to a blocking wait."""
    query = d.cuda.fn["cuStreamQuery"]
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        rc = query(stream)
        if rc == 0:
            return
        if rc != CUDA_ERROR_NOT_READY:
            raise CudaError(f"cuStreamQuery: {d.cuda.error_name(rc)}")
    d.cuda("cuStreamSynchronize", stream)


def launch(d: CudaProbeDevice, spin_ns: int, reach_bound_ns: int, calibrations: int,
           progress: Callable[[str], None]) -> dict:
    """How long a kernel launched now waits before its first block runs, and the share of
    the SMs its blocks reach within ``reach_bound_ns`` of the first.

    The GPU's global timer is related to the host's monotonic clock by launching a
    one-thread kernel that reads it, ``calibrations`` times, and keeping the run with the
    shortest round trip (as NTP does); its half round trip bounds the error. The round trip
    polls the stream rather than sleeping on it (a blocking wait adds tens of microseconds
    of wake-up); the kernel is one thread, so the poll lasts microseconds."""
    cu = d.cuda
    module = load_ptx(d)
    sms = d.sm_count()
    blocks = 2 * sms
    buf = CUdeviceptr()
    stream = CUstream()
    try:
        stamp = _function(d, module, "gpuprobe_stamp")
        probe = _function(d, module, "gpuprobe_launch")
        cu("cuMemAlloc_v2", C.byref(buf), blocks * 16)
        cu("cuStreamCreate", C.byref(stream), CU_STREAM_NON_BLOCKING)
        gt = C.c_uint64()
        best: tuple[int, int] | None = None  # (round trip, offset gpu - host)
        progress(f"calibrating the GPU timer ({calibrations} round trips)")
        for _ in range(calibrations):
            t0 = time.monotonic_ns()
            _launch(d, stamp, 1, 1, [buf.value], stream)
            _poll(d, stream)
            t1 = time.monotonic_ns()
            cu("cuMemcpyDtoH_v2", C.byref(gt), buf, 8)
            rtt, offset = t1 - t0, gt.value - (t0 + t1) // 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        assert best is not None
        cu("cuMemsetD8_v2", buf, 0, blocks * 16)
        progress(f"launching {blocks} blocks on {sms} SMs")
        t_launch = time.monotonic_ns()
        _launch(d, probe, blocks, 32, [buf.value, spin_ns], stream)
        cu("cuStreamSynchronize", stream)
        out = (C.c_uint64 * (blocks * 2))()
        cu("cuMemcpyDtoH_v2", out, buf, blocks * 16)
    finally:
        if stream:
            cu("cuStreamDestroy_v2", stream)
        if buf.value:
            cu("cuMemFree_v2", buf)
        cu("cuModuleUnload", module)
    starts = [out[2 * i] for i in range(blocks)]
    smids = [out[2 * i + 1] for i in range(blocks)]
    return analyse_launch(starts, smids, sms, t_launch, best[1], best[0], reach_bound_ns)
