"""Issue 16's calls failing every way a library fails them: not supported, no permission, a
call that hangs, and garbage (the call succeeds and what it returns is all-ones bytes, as a
firmware field never written or a library bug gives). The fault matrices of
test_nvidia_faults.py and test_amd_faults.py record their calls from a default run, which has
no NVIDIA board with fans and injects no garbage; this module covers both for the new calls,
on scenarios that have the hardware. Each time the other GPUs keep their values, /metrics
renders, nothing is counted as an internal error, and what the call feeds is absent or a
value the hardware can have, never the garbage."""

from __future__ import annotations

import math
import threading
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuprobe.probes.sim import ManualClock

from .conftest import make_daemon, wait_for
from .faultcheck import cycles_end_in_time, no_internal_errors, renders, settle
from .test_amd_backend import AMD_FAST, AMD_SCENARIO

TRAINER = {"pid": 4100, "name": "trainer", "utilization": 0.8,
           "memory": {"pattern": "constant", "size": "4GiB"}}
NVIDIA_SCENARIO = {"seed": 4, "duration": "1h", "devices": [
    {"vendor": "nvidia", "architecture": "hopper", "fans": 2, "processes": [TRAINER],
     "events": [{"at": "3m", "kind": "link_errors", "link": 2, "error": "replay",
                 "count": 5}]},
    {"vendor": "nvidia", "architecture": "hopper", "fans": 2,
     "processes": [dict(TRAINER, pid=4200)]},
]}

# What each call feeds, and the values the hardware can have (inclusive bounds).
RATIO, WATTS, FLAG = (0.0, 2.0), (0.001, 5000.0), (0.0, 1.0)
COUNT = (0.0, 2.0 ** 53)
FEEDS: dict[str, dict[str, tuple[float, float]]] = {
    # NVIDIA
    "nvmlDeviceGetPowerManagementLimitConstraints": {
        "gpuprobe_power_limit_min_watts": WATTS, "gpuprobe_power_limit_max_watts": WATTS},
    "nvmlDeviceGetPowerManagementDefaultLimit": {"gpuprobe_power_limit_default_watts": WATTS},
    "nvmlDeviceGetNumFans": {"gpuprobe_fan_speed_ratio": RATIO},
    "nvmlDeviceGetFanSpeed_v2": {"gpuprobe_fan_speed_ratio": RATIO},
    "nvmlDeviceGetFieldValues": {
        "gpuprobe_reset_required": FLAG, "gpuprobe_link_up": FLAG,
        "gpuprobe_interconnect_links": (0.0, 64.0), "gpuprobe_interconnect_version": (1.0, 10.0),
        "gpuprobe_link_errors_total": COUNT, "gpuprobe_pcie_errors_total": COUNT,
        "gpuprobe_link_transmit_bytes_total": (0.0, 2.0 ** 64)},
    "nvmlDeviceGetProcessesUtilizationInfo": {"gpuprobe_process_utilization_ratio": FLAG},
    "nvmlDeviceGetProcessUtilization": {"gpuprobe_process_utilization_ratio": FLAG},
    "nvmlDeviceGetSupportedEventTypes": {"gpuprobe_device_events_total": COUNT},
    # AMD
    "amdsmi_get_power_cap_info": {
        "gpuprobe_power_limit_min_watts": WATTS, "gpuprobe_power_limit_max_watts": WATTS,
        "gpuprobe_power_limit_default_watts": WATTS},
    "amdsmi_get_gpu_fan_speed": {"gpuprobe_fan_speed_ratio": RATIO},
    "amdsmi_get_gpu_fan_speed_max": {"gpuprobe_fan_speed_ratio": RATIO},
    "amdsmi_get_gpu_xgmi_link_status": {"gpuprobe_link_up": FLAG,
                                        "gpuprobe_interconnect_links_up": (0.0, 64.0)},
    "amdsmi_get_gpu_metrics_info": {
        "gpuprobe_interconnect_link_width": (1.0, 32.0),
        "gpuprobe_interconnect_link_speed_bytes_per_second": (1.0, 1e12),
        "gpuprobe_link_transmit_bytes_total": (0.0, 2.0 ** 64),
        "gpuprobe_pcie_transferred_bytes_total": (0.0, 2.0 ** 64),
        "gpuprobe_throttle_seconds_total": (0.0, 1e9)},
}
NVIDIA_CALLS = [fn for fn in FEEDS if fn.startswith("nvml")]
AMD_CALLS = [fn for fn in FEEDS if fn.startswith("amdsmi")]
# The AMD GPU each call is failed on: the fans are the Radeon's (index 1), the rest the
# MI300X's (index 0).
AMD_TARGET = {"amdsmi_get_gpu_fan_speed": 1, "amdsmi_get_gpu_fan_speed_max": 1}
UNSUPPORTED = {"nvidia": 3, "amd": 2}  # NOT_SUPPORTED
NO_PERMISSION = {"nvidia": 4, "amd": 10}


def _daemon(vendor: str):
    if vendor == "nvidia":
        return make_daemon(NVIDIA_SCENARIO)
    d = make_daemon(AMD_SCENARIO, AMD_FAST, ManualClock(start=60.0))
    face = d.simulation.libamdsmi
    face.violation_latency = face.throughput_latency = 0.01
    return d


def _library(d, vendor: str):
    return d.simulation.libnvml if vendor == "nvidia" else d.simulation.libamdsmi


def _cycle(d, sleep: float = 0.12) -> None:
    d.scheduler.run_once()
    time.sleep(sleep)
    d.simulation.world.clock.advance(60.0)


def _case(fn: str) -> tuple[str, int]:
    vendor = "nvidia" if fn.startswith("nvml") else "amd"
    return vendor, AMD_TARGET.get(fn, 0)


def _others_fine(d, vendor: str, target: int) -> None:
    devs = list(d.store.view().devices())
    others = [s for s in devs if s.identity.vendor != vendor
              or s.identity.index.split("/")[0] != str(target)]
    assert len(others) >= 1
    for s in others:
        assert s.up, f"{s.identity.vendor} GPU {s.identity.index} went down: {s.down_reason}"
        assert s.memory.used_bytes is not None, f"GPU {s.identity.index} lost its values"


def _series(d, vendor: str, target: int, families) -> dict[str, list[float]]:
    """The target GPU's values of ``families``, by family."""
    text = generate_latest(d.registry).decode()
    out: dict[str, list[float]] = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name in families and s.labels.get("vendor") == vendor \
                    and s.labels.get("gpu", "").split("/")[0] == str(target):
                out.setdefault(s.name, []).append(s.value)
    return out


def _setup(d, vendor: str, fn: str) -> None:
    if fn == "nvmlDeviceGetProcessUtilization":  # the older call: a driver without the newer
        d.simulation.libnvml.faults.add("nvmlDeviceGetProcessesUtilizationInfo", error=13)


@pytest.mark.parametrize("fn", sorted(FEEDS))
def test_garbage_is_never_exported(fn):
    vendor, target = _case(fn)
    d = _daemon(vendor)
    try:
        _setup(d, vendor, fn)
        _library(d, vendor).faults.add(fn, target, garbage=True)
        settle(d.scheduler.run_once, lambda: _others_fine(d, vendor, target))
        for _ in range(4):
            _cycle(d)
        _others_fine(d, vendor, target)
        renders(d)
        no_internal_errors(d)
        mine = [s for s in d.store.view().devices() if s.identity.vendor == vendor
                and s.identity.index.split("/")[0] == str(target)]
        assert mine and all(s.up and s.memory.used_bytes is not None for s in mine), \
            "the GPU given garbage lost more than that call's values"
        for family, values in _series(d, vendor, target, FEEDS[fn]).items():
            lo, hi = FEEDS[fn][family]
            for v in values:
                assert math.isfinite(v) and lo <= v <= hi, f"{family} = {v} from garbage"
    finally:
        d.stop()


@pytest.mark.parametrize("kind", ["unsupported", "no_permission"])
@pytest.mark.parametrize("fn", sorted(FEEDS))
def test_unsupported_or_no_permission_leaves_its_values_absent(fn, kind):
    vendor, target = _case(fn)
    d = _daemon(vendor)
    try:
        _setup(d, vendor, fn)
        code = (UNSUPPORTED if kind == "unsupported" else NO_PERMISSION)[vendor]
        _library(d, vendor).faults.add(fn, target, error=code)
        settle(d.scheduler.run_once, lambda: _others_fine(d, vendor, target))
        for _ in range(3):
            _cycle(d)
        _others_fine(d, vendor, target)
        renders(d)
        no_internal_errors(d)
        got = _series(d, vendor, target, GONE_WITH[fn])
        assert not got, f"{fn} failing, yet {sorted(got)} exported"
    finally:
        d.stop()


# What must be absent while a call cannot answer: all it feeds, but where an older call
# stands in (per-process utilization) nothing, and for the metrics table only the families
# nothing else feeds.
GONE_WITH = {fn: set(feeds) for fn, feeds in FEEDS.items()}
GONE_WITH["nvmlDeviceGetProcessesUtilizationInfo"] = set()
GONE_WITH["amdsmi_get_gpu_xgmi_link_status"] = {"gpuprobe_link_up"}
GONE_WITH["amdsmi_get_gpu_metrics_info"] = {
    "gpuprobe_interconnect_link_width", "gpuprobe_interconnect_link_speed_bytes_per_second",
    "gpuprobe_link_transmit_bytes_total", "gpuprobe_pcie_transferred_bytes_total"}


@pytest.mark.parametrize("fn", sorted(FEEDS))
def test_a_hung_call_costs_only_its_gpu(fn):
    vendor, target = _case(fn)
    d = _daemon(vendor)
    release = threading.Event()
    try:
        _setup(d, vendor, fn)
        _library(d, vendor).faults.add(fn, target, hang=release)
        settle(d.scheduler.run_once, lambda: _others_fine(d, vendor, target))
        cycles_end_in_time(lambda: _cycle(d, sleep=0.0), 2.5,
                           lambda: _others_fine(d, vendor, target))
        renders(d)
        release.set()
        _library(d, vendor).faults.clear()
        _setup(d, vendor, fn)

        def recovered() -> bool:
            _cycle(d, sleep=0.05)
            return all(s.up for s in d.store.view().devices())
        wait_for(recovered, timeout=15)
        _others_fine(d, vendor, target)
    finally:
        release.set()
        d.stop()
