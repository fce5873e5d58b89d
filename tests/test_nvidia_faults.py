"""Fault injection on every NVML call the backend makes: the rest keeps working.

The list of calls is not written by hand: a clean run of the backend against the simulated
NVML records which functions it calls on which GPU, and every one of them is then made to
fail in each of the ways NVML fails: NOT_SUPPORTED, GPU_IS_LOST, a transient UNKNOWN, and a
call that hangs past the deadline. Library-level failures (missing, driver not loaded,
version mismatch, vanishing while running, a hung enumeration) are tested below the matrix.
"""

from __future__ import annotations

import threading
import time

import pynvml
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import make_daemon, wait_for

TARGET_PREFERENCE = (1, 2, 0)  # the second H100, else the MIG GPU, else the first


def _cycle(d, sleep: float = 0.12) -> None:
    """One run of every collector, with time for a GPM interval."""
    d.scheduler.run_once()
    time.sleep(sleep)
    d.simulation.world.clock.advance(5.0)


def _recorded_calls() -> dict[str, int]:
    """Every per-GPU NVML function a clean run calls, with the GPU to fail it on."""
    d = make_daemon()
    try:
        for _ in range(3):
            _cycle(d)
        calls = d.simulation.nvml.calls_by_device
        wait_for(lambda: calls[("nvmlDeviceRegisterEvents", 0)] and
                 calls[("nvmlEventSetWait", None)], timeout=10)  # the event thread is running
        seen: dict[str, set[int]] = {}
        for (fn, device), n in d.simulation.nvml.calls_by_device.items():
            if device is not None and n:
                seen.setdefault(fn, set()).add(device)
    finally:
        d.stop()
    return {fn: next(t for t in TARGET_PREFERENCE if t in devs)
            for fn, devs in sorted(seen.items())}


CALLS = _recorded_calls()
# Functions whose failure means the GPU cannot be identified at all during discovery.
IDENTIFYING = {"nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID"}


def test_the_matrix_covers_the_backend():
    """A guard against the recording silently finding nothing."""
    for fn in ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage",
               "nvmlGpmSampleGet", "nvmlDeviceGetComputeRunningProcesses",
               "nvmlDeviceRegisterEvents", "nvmlDeviceGetMigDeviceHandleByIndex",
               "nvmlDeviceGetHandleByIndex"):
        assert fn in CALLS
    assert len(CALLS) >= 35


def _by_index(d):
    return {s.identity.index: s for s in d.store.view().devices()}


def _physical(index: str) -> str:
    return index.split("/")[0]


def _others_fine(d, target: int) -> None:
    """Every GPU not behind the faulty one is up and has its values."""
    devs = _by_index(d)
    others = [s for i, s in devs.items() if _physical(i) != str(target)]
    assert len(others) >= 2
    for s in others:
        assert s.up, f"GPU {s.identity.index} went down: {s.down_reason}"
        assert s.memory.used_bytes is not None, f"GPU {s.identity.index} lost its values"


def _renders(d, expect: str = "gpuprobe_device_up") -> None:
    text = generate_latest(d.registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert expect in names


def _no_internal_errors(d) -> None:
    for h in d.store.view().health.values():
        assert h.errors_total.get("internal", 0) == 0, h


def _shape(sample) -> set[str]:
    """Which values a device sample has (not their numbers)."""
    out = set()
    for section in ("memory", "power", "pcie", "errors", "activity"):
        obj = getattr(sample, section)
        out |= {f"{section}.{k}" for k in obj.__dataclass_fields__ if getattr(obj, k) is not None
                and getattr(obj, k) != {}}
    out |= {f"temp.{k}" for k in sample.thermal.temperatures}
    out |= {f"util.{k}" for k in sample.utilization}
    out |= {f"clock.{k}" for k in sample.clocks.current}
    if sample.identity.model:
        out.add("identity.model")
    return out


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_not_supported_is_absent_and_not_asked_again(fn):
    target = CALLS[fn]
    d = make_daemon()
    try:
        d.simulation.nvml.faults.add(fn, target, error=pynvml.NVML_ERROR_NOT_SUPPORTED)
        _cycle(d)
        _cycle(d)
        calls = d.simulation.nvml.calls_by_device
        after_two = calls[(fn, target)]
        _cycle(d)
        _cycle(d)
        _others_fine(d, target)
        _renders(d)
        _no_internal_errors(d)
        unsupported = sum(h.errors_total.get("unsupported", 0)
                          for h in d.store.view().health.values())
        assert unsupported >= 1
        if fn not in IDENTIFYING:
            assert _by_index(d)[str(target)].up
        # Remembered as unsupported: not asked again.
        if fn not in ("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID"):
            assert calls[(fn, target)] == after_two, "asked again after NOT_SUPPORTED"
    finally:
        d.stop()


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_gpu_lost_takes_down_only_that_gpu(fn):
    target = CALLS[fn]
    d = make_daemon()
    try:
        d.simulation.nvml.faults.add(fn, target, error=pynvml.NVML_ERROR_GPU_IS_LOST)
        for _ in range(3):
            _cycle(d)
            _others_fine(d, target)
        _renders(d)
        _no_internal_errors(d)
        fatal = sum(h.errors_total.get("device_fatal", 0) for h in d.store.view().health.values())
        assert fatal >= 1
    finally:
        d.stop()


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_transient_error_is_retried_next_cycle(fn):
    target = CALLS[fn]
    clean = make_daemon()
    d = make_daemon()
    try:
        for _ in range(4):
            _cycle(clean)
        expected = _shape(_by_index(clean)[str(target)])
        d.simulation.nvml.faults.add(fn, target, error=pynvml.NVML_ERROR_UNKNOWN, times=1)
        _cycle(d)
        _others_fine(d, target)
        for _ in range(3):
            _cycle(d)
        _others_fine(d, target)
        _no_internal_errors(d)
        sample = _by_index(d)[str(target)]
        assert sample.up
        assert _shape(sample) == expected, "a value did not come back after a transient error"
    finally:
        d.stop()
        clean.stop()


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_hung_call_costs_only_its_gpu(fn):
    target = CALLS[fn]
    d = make_daemon()
    release = threading.Event()
    try:
        d.simulation.nvml.faults.add(fn, target, hang=release)
        for _ in range(2):
            t0 = time.monotonic()
            _cycle(d, sleep=0.0)
            # Collections end at their deadline (0.5 s) whatever the hung GPU does.
            assert time.monotonic() - t0 < 1.5
            _others_fine(d, target)
        _renders(d)
        target_sample = _by_index(d).get(str(target))
        if fn not in ("nvmlDeviceRegisterEvents", "nvmlDeviceGetSupportedEventTypes"):
            # Event registration runs on its own thread; everything else holds the GPU's worker.
            assert target_sample is None or not target_sample.up
        release.set()
        d.simulation.nvml.faults.clear()

        def recovered():
            _cycle(d, sleep=0.05)
            s = _by_index(d).get(str(target))
            return s is not None and s.up
        wait_for(recovered, timeout=10)
        _others_fine(d, target)
    finally:
        release.set()
        d.stop()


# -- the library itself ---------------------------------------------------------------------


def test_library_missing_at_start_then_installed():
    d = make_daemon()
    nvml = d.simulation.nvml
    try:
        nvml.library_missing = True
        d.scheduler.run_once()
        view = d.store.view()
        backend = view.results["nvidia"].backends[0]
        assert backend.up is False and "not found" in backend.reason
        assert view.devices() == []
        assert view.health["nvidia"].up  # a host without NVIDIA is not a failing collector
        _renders(d, "gpuprobe_backend_up")
        nvml.library_missing = False

        def found():
            d.scheduler.run_once()
            return len(d.store.view().devices()) == 5
        wait_for(found, timeout=5)
    finally:
        d.stop()


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                                  pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH])
def test_library_fatal_at_init_is_retried(code):
    d = make_daemon()
    try:
        rule = d.simulation.nvml.faults.add("nvmlInit", error=code)
        d.scheduler.run_once()
        view = d.store.view()
        assert view.results["nvidia"].backends[0].up is False
        assert view.health["nvidia"].up is False  # unlike a missing library, this is a fault
        assert view.health["nvidia"].errors_total["library_fatal"] >= 1
        d.simulation.nvml.faults._rules.remove(rule)

        def up():
            d.scheduler.run_once()
            return d.store.view().results["nvidia"].backends[0].up
        wait_for(up, timeout=5)
    finally:
        d.stop()


def test_library_vanishing_while_running_keeps_devices_listed_as_down():
    d = make_daemon()
    nvml = d.simulation.nvml
    try:
        _cycle(d)
        assert len(d.store.view().devices()) == 5
        nvml.library_missing = True  # every call now fails UNINITIALIZED
        _cycle(d)
        view = d.store.view()
        devs = view.devices()
        assert len(devs) == 5 and not any(s.up for s in devs)
        assert view.results["nvidia"].backends[0].up is False
        _renders(d)
        nvml.library_missing = False

        def back():
            _cycle(d, sleep=0.02)
            return all(s.up for s in d.store.view().devices())
        wait_for(back, timeout=5)
    finally:
        d.stop()


def test_enumeration_error_takes_the_backend_down_and_back():
    d = make_daemon(config={"nvidia": {"retry_initial": "10ms", "retry_max": "50ms",
                                       "discovery_interval": "1s"}})
    try:
        _cycle(d)
        d.simulation.nvml.faults.add("nvmlDeviceGetCount",
                                     error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, times=1)
        time.sleep(1.1)  # rediscovery is due
        _cycle(d)
        assert d.store.view().results["nvidia"].backends[0].up is False

        def back():
            _cycle(d, sleep=0.02)
            return all(s.up for s in d.store.view().devices())
        wait_for(back, timeout=5)
    finally:
        d.stop()


def test_hung_enumeration_stalls_one_collector_not_the_daemon():
    """A hang holding the whole library (here: nvmlDeviceGetCount during rediscovery) stalls
    the telemetry collector, which drives discovery; it is reported stalled, its GPUs down,
    and /metrics and the other collectors carry on."""
    d = make_daemon(config={"nvidia": {"retry_initial": "10ms", "retry_max": "50ms",
                                       "discovery_interval": "1s"},
                            "collectors": {"nvidia": {"interval": "200ms", "timeout": "300ms"},
                                           "nvidia_processes": {"interval": "200ms",
                                                                "timeout": "300ms"},
                                           "nvidia_events": {"interval": "200ms",
                                                             "timeout": "100ms"}}})
    release = threading.Event()
    try:
        d.start(serve=False)
        wait_for(lambda: len(d.store.view().devices()) == 5, timeout=5)
        d.simulation.nvml.faults.add("nvmlDeviceGetCount", hang=release)
        def stalled():
            return [n for n, h in d.store.view().health.items() if h.stalled]
        assert wait_for(stalled, timeout=5) == ["nvidia"]
        hung = "nvidia"
        wait_for(lambda: not any(s.up for s in d.store.view().devices()), timeout=5)
        view = d.store.view()
        assert view.health[hung].errors_total["timeout"] >= 1
        runs = view.health["nvidia_events"].runs
        wait_for(lambda: d.store.view().health["nvidia_events"].runs > runs + 2, timeout=5)
        assert d.alive()
        _renders(d)
        release.set()
        d.simulation.nvml.faults.clear()
        wait_for(lambda: not stalled(), timeout=5)
        wait_for(lambda: all(s.up for s in d.store.view().devices()), timeout=5)
    finally:
        release.set()
        d.stop()


def test_gpu_answering_nothing_reads_down_and_comes_back(caplog):
    """Issue 11, defect 7: every call to one GPU failing with UNKNOWN (transient) left it
    up, exporting its static facts. It reads down with the reason, the others are fine, it
    is logged once, and it reads up again when calls answer."""
    d = make_daemon()
    try:
        _cycle(d)
        assert _by_index(d)["1"].up
        with caplog.at_level("INFO", logger="gpuprobe"):
            d.simulation.nvml.faults.add("*", 1, error=pynvml.NVML_ERROR_UNKNOWN)
            for _ in range(3):
                _cycle(d)
                s = _by_index(d)["1"]
                assert not s.up
                assert s.down_reason.startswith("no call answered"), s.down_reason
                assert s.memory.total_bytes is None and s.thermal.thresholds == {}
                _others_fine(d, 1)
            _renders(d)
            _no_internal_errors(d)
            d.simulation.nvml.faults.clear()
            _cycle(d)
        s = _by_index(d)["1"]
        assert s.up and s.memory.used_bytes is not None
        said = [r.getMessage() for r in caplog.records]
        assert sum("answered none" in m for m in said) == 1, said
        assert sum("answers calls again" in m for m in said) == 1, said
    finally:
        d.stop()
