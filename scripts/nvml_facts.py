"""Raw NVML answers for the questions the backend's design leaves to hardware.

Prints JSON: for each GPU, every NVML call and field the backend uses with its raw value or
error, how long it took, and the values behind open questions (are the T.Limit fields
absolute or relative; what unit are the throttle-duration fields in; do the PCIe byte
counters and GPM agree; what does nvmlDeviceGetPcieLinkMaxSpeed return). Run it on a GPU
host:  python3 scripts/nvml_facts.py > facts.json
"""

from __future__ import annotations

import json
import sys
import time

import pynvml as n

FIELDS = {1: "ECC_CURRENT", 3: "ECC_SBE_VOL_TOTAL", 4: "ECC_DBE_VOL_TOTAL", 5: "ECC_SBE_AGG",
          6: "ECC_DBE_AGG", 29: "RETIRED_SBE", 30: "RETIRED_DBE", 31: "RETIRED_PENDING",
          74: "CLOCKS_EVENT_REASON_SW_POWER_CAP", 75: "PERF_POLICY_THERMAL",
          76: "CLOCKS_EVENT_REASON_SYNC_BOOST", 77: "PERF_POLICY_BOARD_LIMIT",
          78: "PERF_POLICY_LOW_UTILIZATION", 79: "PERF_POLICY_RELIABILITY",
          80: "PERF_POLICY_TOTAL_APP_CLOCKS", 81: "PERF_POLICY_TOTAL_BASE_CLOCKS",
          91: "NVLINK_LINK_COUNT", 95: "PCIE_REPLAY_ROLLOVER_COUNTER",
          173: "PCIE_COUNT_CORRECTABLE_ERRORS", 175: "PCIE_COUNT_RECEIVER_ERROR",
          176: "PCIE_COUNT_BAD_TLP", 178: "PCIE_COUNT_BAD_DLLP", 179: "PCIE_COUNT_NON_FATAL_ERROR",
          180: "PCIE_COUNT_FATAL_ERROR", 181: "PCIE_COUNT_UNSUPPORTED_REQ",
          182: "PCIE_COUNT_LCRC_ERROR", 183: "PCIE_COUNT_LANE_ERROR", 226: "RESET_STATUS",
          227: "DRAIN_AND_RESET_STATUS", 230: "GET_GPU_RECOVERY_ACTION",
          82: "MEMORY_TEMP", 83: "TOTAL_ENERGY_CONSUMPTION", 94: "PCIE_REPLAY_COUNTER",
          142: "REMAPPED_COR", 143: "REMAPPED_UNC", 144: "REMAPPED_PENDING",
          145: "REMAPPED_FAILURE", 169: "PCIE_L0_TO_RECOVERY", 174: "PCIE_NAKS_RECEIVED",
          177: "PCIE_NAKS_SENT", 185: "POWER_AVERAGE", 186: "POWER_INSTANT",
          193: "TEMPERATURE_SHUTDOWN_TLIMIT", 194: "TEMPERATURE_SLOWDOWN_TLIMIT",
          195: "TEMPERATURE_MEM_MAX_TLIMIT", 196: "TEMPERATURE_GPU_MAX_TLIMIT",
          197: "PCIE_COUNT_TX_BYTES", 198: "PCIE_COUNT_RX_BYTES",
          269: "CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
          270: "CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
          271: "CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN"}
MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def call(fn, *args, **kw):
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kw)
        ok = True
    except Exception as e:  # we want every error recorded, whatever it is
        value, ok = f"{type(e).__name__}: {e}", False
    us = round((time.perf_counter() - t0) * 1e6, 1)
    return {"ok": ok, "value": plain(value), "us": us}


def plain(v):
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if hasattr(v, "_fields_"):
        return {f[0]: plain(getattr(v, f[0])) for f in v._fields_}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if hasattr(v, "__dict__"):
        return {k: plain(x) for k, x in vars(v).items()}
    return repr(v)


def gpm(h, seconds=1.0):
    ids = (1, 2, 3, 5, 10, 20, 21)
    out = {"support": call(n.nvmlGpmQueryDeviceSupport, h)}
    try:
        a, b = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
        t0 = time.perf_counter()
        n.nvmlGpmSampleGet(h, a)
        out["sample_get_us"] = round((time.perf_counter() - t0) * 1e6, 1)
        time.sleep(seconds)
        n.nvmlGpmSampleGet(h, b)
        g = n.c_nvmlGpmMetricsGet_t()
        g.version, g.numMetrics = n.NVML_GPM_METRICS_GET_VERSION, len(ids)
        g.sample1, g.sample2 = a, b
        for i, mid in enumerate(ids):
            g.metrics[i].metricId = mid
        t0 = time.perf_counter()
        n.nvmlGpmMetricsGet(g)
        out["metrics_get_us"] = round((time.perf_counter() - t0) * 1e6, 1)
        out["metrics"] = {mid: {"ret": g.metrics[i].nvmlReturn, "value": g.metrics[i].value}
                          for i, mid in enumerate(ids)}
        n.nvmlGpmSampleFree(a)
        n.nvmlGpmSampleFree(b)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def fields(h):
    vals = n.nvmlDeviceGetFieldValues(h, list(FIELDS))
    out = {}
    for v in vals:
        name = FIELDS[v.fieldId]
        if v.nvmlReturn:
            out[name] = {"error": str(n.NVMLError(v.nvmlReturn))}
        else:
            out[name] = {"value": getattr(v.value, MEMBERS[v.valueType]),
                         "type": v.valueType, "latency_us": v.latencyUsec}
    return out


# The per-link fields gpuprobe reads in one batch (probes/nvidia/links.py), scopeId = link
LINK_FIELDS = {165: "NVLINK_GET_STATE", 166: "NVLINK_GET_VERSION",
               138: "NVLINK_THROUGHPUT_DATA_TX", 139: "NVLINK_THROUGHPUT_DATA_RX",
               163: "NVLINK_ERROR_DL_CRC", 161: "NVLINK_ERROR_DL_REPLAY",
               162: "NVLINK_ERROR_DL_RECOVERY"}


def nvlink_fields(h, links=18):
    """The batch gpuprobe reads, its time, and each link's answers."""
    ids = [(f, link) for link in range(links) for f in LINK_FIELDS]
    got = call(n.nvmlDeviceGetFieldValues, h, ids)
    if not got["ok"]:
        return got
    vals = n.nvmlDeviceGetFieldValues(h, ids)
    per = {}
    for (fid, link), v in zip(ids, vals, strict=True):
        per.setdefault(str(link), {})[LINK_FIELDS[fid]] = (
            {"error": str(n.NVMLError(v.nvmlReturn))} if v.nvmlReturn else
            {"value": getattr(v.value, MEMBERS[v.valueType]), "type": v.valueType})
    return {"us": got["us"], "links": per}


def device(i):
    h = n.nvmlDeviceGetHandleByIndex(i)
    d = {
        "name": call(n.nvmlDeviceGetName, h),
        "uuid": call(n.nvmlDeviceGetUUID, h),
        "pci": call(n.nvmlDeviceGetPciInfo, h),
        "architecture": call(n.nvmlDeviceGetArchitecture, h),
        "cuda_cc": call(n.nvmlDeviceGetCudaComputeCapability, h),
        "mig_mode": call(n.nvmlDeviceGetMigMode, h),
        "compute_mode": call(n.nvmlDeviceGetComputeMode, h),
        "persistence_mode": call(n.nvmlDeviceGetPersistenceMode, h),
        "memory_v2": call(n.nvmlDeviceGetMemoryInfo, h, version=n.nvmlMemory_v2),
        "memory_v1": call(n.nvmlDeviceGetMemoryInfo, h),
        "bar1": call(n.nvmlDeviceGetBAR1MemoryInfo, h),
        "temperature_v": call(n.nvmlDeviceGetTemperatureV, h, n.NVML_TEMPERATURE_GPU),
        "temperature": call(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
        "margin_temperature": call(n.nvmlDeviceGetMarginTemperature, h),
        "thresholds": {name: call(n.nvmlDeviceGetTemperatureThreshold, h, t) for name, t in (
            ("shutdown", 0), ("slowdown", 1), ("mem_max", 2), ("gpu_max", 3))},
        "power_usage_mw": call(n.nvmlDeviceGetPowerUsage, h),
        "enforced_limit_mw": call(n.nvmlDeviceGetEnforcedPowerLimit, h),
        "limit_constraints_mw": call(n.nvmlDeviceGetPowerManagementLimitConstraints, h),
        "default_limit_mw": call(n.nvmlDeviceGetPowerManagementDefaultLimit, h),
        "num_fans": call(n.nvmlDeviceGetNumFans, h),
        "fan_speed_0": call(n.nvmlDeviceGetFanSpeed_v2, h, 0),
        "nvlink_fields": nvlink_fields(h),
        "energy_mj": call(n.nvmlDeviceGetTotalEnergyConsumption, h),
        "clocks_mhz": {c: call(n.nvmlDeviceGetClockInfo, h, k) for c, k in (
            ("graphics", 0), ("sm", 1), ("mem", 2), ("video", 3))},
        "max_clocks_mhz": {c: call(n.nvmlDeviceGetMaxClockInfo, h, k) for c, k in (
            ("graphics", 0), ("sm", 1), ("mem", 2), ("video", 3))},
        "throttle_current": call(n.nvmlDeviceGetCurrentClocksEventReasons, h),
        "throttle_supported": call(n.nvmlDeviceGetSupportedClocksEventReasons, h),
        "pstate": call(n.nvmlDeviceGetPerformanceState, h),
        "pcie_gen": call(n.nvmlDeviceGetCurrPcieLinkGeneration, h),
        "pcie_width": call(n.nvmlDeviceGetCurrPcieLinkWidth, h),
        "pcie_max_gen": call(n.nvmlDeviceGetMaxPcieLinkGeneration, h),
        "pcie_gpu_max_gen": call(n.nvmlDeviceGetGpuMaxPcieLinkGeneration, h),
        "pcie_max_width": call(n.nvmlDeviceGetMaxPcieLinkWidth, h),
        "pcie_link_max_speed": call(n.nvmlDeviceGetPcieLinkMaxSpeed, h),
        "pcie_speed_mbps": call(n.nvmlDeviceGetPcieSpeed, h),
        "pcie_replay": call(n.nvmlDeviceGetPcieReplayCounter, h),
        "pcie_throughput_tx_kbs": call(n.nvmlDeviceGetPcieThroughput, h, 0),
        "pcie_throughput_rx_kbs": call(n.nvmlDeviceGetPcieThroughput, h, 1),
        "utilization": call(n.nvmlDeviceGetUtilizationRates, h),
        "encoder": call(n.nvmlDeviceGetEncoderUtilization, h),
        "decoder": call(n.nvmlDeviceGetDecoderUtilization, h),
        "ecc_mode": call(n.nvmlDeviceGetEccMode, h),
        "remapped_rows": call(n.nvmlDeviceGetRemappedRows, h),
        "compute_procs": call(n.nvmlDeviceGetComputeRunningProcesses, h),
        "graphics_procs": call(n.nvmlDeviceGetGraphicsRunningProcesses, h),
        "mps_procs": call(n.nvmlDeviceGetMPSComputeRunningProcesses, h),
        "supported_events": call(n.nvmlDeviceGetSupportedEventTypes, h),
        "fields": fields(h),
    }
    before = fields(h)
    d["gpm"] = gpm(h)
    after = fields(h)
    d["fields_after_1s"] = {k: after[k] for k in ("PCIE_COUNT_TX_BYTES", "PCIE_COUNT_RX_BYTES",
                                                   "TOTAL_ENERGY_CONSUMPTION")}
    d["fields_before_gpm"] = {k: before[k] for k in d["fields_after_1s"]}
    return d


def main() -> int:
    t0 = time.perf_counter()
    n.nvmlInit()
    init_ms = round((time.perf_counter() - t0) * 1e3, 1)
    out = {"init_ms": init_ms, "driver": call(n.nvmlSystemGetDriverVersion),
           "nvml": call(n.nvmlSystemGetNVMLVersion),
           "cuda_driver": call(n.nvmlSystemGetCudaDriverVersion),
           "pynvml": getattr(n, "__version__", None),
           "devices": [device(i) for i in range(n.nvmlDeviceGetCount())]}
    n.nvmlShutdown()
    json.dump(out, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
