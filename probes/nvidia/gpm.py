"""GPM (GPU Performance Monitoring): profiling ratios on Hopper and newer, with no CUDA context.

Two host-side samples are taken one poll interval apart and NVML computes each metric as the
average between them; the two buffers are reused in turns. Samples are freed before NVML is
shut down. Devices without GPM (pre-Hopper, or NOT_SUPPORTED) are remembered and skipped.
"""

from __future__ import annotations

import math
import time
from typing import Any

from gpuprobe.probes.backend import Query
from gpuprobe.probes.nvidia import structs
from gpuprobe.probes.nvidia.session import NvDevice, NvmlSession

# (NVML_GPM_METRIC_* id, name in the result)
GPM_METRICS = (
    (1, "graphics_engine"),  # GRAPHICS_UTIL, %
    (2, "sm_active"),  # SM_UTIL, %
    (3, "sm_occupancy"),  # SM_OCCUPANCY, %
    (5, "tensor_active"),  # ANY_TENSOR_UTIL, %
    (10, "dram_active"),  # DRAM_BW_UTIL, %
    (20, "pcie_tx"),  # PCIE_TX_PER_SEC, MiB/s
    (21, "pcie_rx"),  # PCIE_RX_PER_SEC, MiB/s
)
PERCENT = {"graphics_engine", "sm_active", "sm_occupancy", "tensor_active", "dram_active"}
MIB = 1024 * 1024
MIN_INTERVAL = 0.1  # nvml.h: samples must be more than 100 ms apart


def read_gpm(session: NvmlSession, dev: NvDevice, q: Query) -> dict[str, float] | None:
    """Ratios (0-1) and PCIe bytes/s since the previous call, or None (first call,
    unsupported, or a failed sample)."""
    lib = session.lib
    if "gpm" in dev.unsupported:
        return None
    st = dev.state.get("gpm")
    if st is None:
        support = q(dev, "gpm.support", lib.nvmlGpmQueryDeviceSupport, dev.physical.handle)
        if support is None or not support.isSupportedDevice:
            if support is not None:
                dev.unsupported.add("gpm")
            return None
        samples = [q(dev, "gpm.alloc", lib.nvmlGpmSampleAlloc) for _ in range(2)]
        if any(s is None for s in samples):
            return None
        st = dev.state["gpm"] = {"samples": samples, "taken": None}
    prev_time = st["taken"]
    cur = st["samples"][1]
    if dev.parent is not None:
        ok = q(dev, "gpm.sample", lib.nvmlGpmMigSampleGet, dev.parent.handle,
               dev.gpu_instance_id, cur)
    else:
        ok = q(dev, "gpm.sample", lib.nvmlGpmSampleGet, dev.handle, cur)
    if ok is None:
        return None
    now = time.monotonic()
    if prev_time is not None and now - prev_time < MIN_INTERVAL:
        return None  # keep the older sample as the baseline
    prev = st["samples"][0]
    st["samples"].reverse()
    st["taken"] = now
    if prev_time is None:
        return None
    get = lib.c_nvmlGpmMetricsGet_t()
    get.version = lib.NVML_GPM_METRICS_GET_VERSION
    get.numMetrics = len(GPM_METRICS)
    get.sample1 = prev
    get.sample2 = cur
    metrics = get.metrics  # the array inside ``get``, not a copy
    for i, (metric_id, _name) in enumerate(GPM_METRICS):
        metrics[i].metricId = metric_id
    if q(dev, "gpm.metrics", lib.nvmlGpmMetricsGet, get) is None:
        return None
    out = {}
    read = structs.reader(type(metrics[0]), ("nvmlReturn", "value"))
    for i, (_metric_id, name) in enumerate(GPM_METRICS):
        ret, value = read(metrics[i])
        if ret != 0 or math.isnan(value):
            continue  # a metric this driver does not know
        out[name] = value / 100.0 if name in PERCENT else value * MIB
    return out


def free_samples(session: NvmlSession) -> None:
    for dev in session.known():
        st = dev.state.pop("gpm", None)
        if st is None:
            continue
        for sample in st["samples"]:
            try:
                session.lib.nvmlGpmSampleFree(sample)
            except Exception:
                pass


def clamp_ratio(value: Any) -> float | None:
    if value is None:
        return None
    return min(1.0, max(0.0, float(value)))
