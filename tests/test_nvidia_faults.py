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

from .conftest import make_daemon, wait_for
from .faultcheck import (
    cycles_end_in_time,
    errors,
    gpu_answering_nothing,
    no_internal_errors,
    renders,
    settle,
    unsupported,
)

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
        calls = d.simulation.libnvml.calls_by_device
        wait_for(lambda: calls[("nvmlDeviceRegisterEvents", 0)] and
                 calls[("nvmlEventSetWait", None)], timeout=10)  # the event thread is running
        seen: dict[str, set[int]] = {}
        for (fn, device), n in d.simulation.libnvml.calls_by_device.items():
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


def _wait_all_up(d) -> None:
    """Until every GPU reads up again, a cycle each try."""
    def back():
        _cycle(d, sleep=0.02)
        return all(s.up for s in d.store.view().devices())
    wait_for(back, timeout=5)


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
def test_not_supported_is_absent_and_not_asked_again(fn, daemon):
    target = CALLS[fn]
    d = daemon
    after_two, after_four = unsupported(d, d.simulation.libnvml, fn, target,
                                        pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: _cycle(d),
                                        lambda: _others_fine(d, target))
    if fn not in IDENTIFYING:
        assert _by_index(d)[str(target)].up
    # Remembered as unsupported: not asked again.
    if fn not in ("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID"):
        assert after_four == after_two, "asked again after NOT_SUPPORTED"


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_gpu_lost_takes_down_only_that_gpu(fn, daemon):
    target = CALLS[fn]
    d = daemon
    d.simulation.libnvml.faults.add(fn, target, error=pynvml.NVML_ERROR_GPU_IS_LOST)
    settle(d.scheduler.run_once, lambda: _others_fine(d, target))
    for _ in range(3):
        _cycle(d)
        _others_fine(d, target)
    renders(d)
    no_internal_errors(d)
    assert errors(d, "device_fatal") >= 1


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_transient_error_is_retried_next_cycle(fn):
    target = CALLS[fn]
    clean = make_daemon()
    d = make_daemon()
    try:
        for _ in range(4):
            _cycle(clean)
        expected = _shape(_by_index(clean)[str(target)])
        d.simulation.libnvml.faults.add(fn, target, error=pynvml.NVML_ERROR_UNKNOWN, times=1)
        settle(d.scheduler.run_once, lambda: _others_fine(d, target))
        _cycle(d)
        _others_fine(d, target)
        for _ in range(3):
            _cycle(d)
        _others_fine(d, target)
        no_internal_errors(d)
        sample = _by_index(d)[str(target)]
        assert sample.up
        assert _shape(sample) == expected, "a value did not come back after a transient error"
    finally:
        d.stop()
        clean.stop()


@pytest.mark.parametrize("fn", sorted(CALLS))
def test_hung_call_costs_only_its_gpu(fn, daemon):
    target = CALLS[fn]
    d = daemon
    release = threading.Event()
    try:
        d.simulation.libnvml.faults.add(fn, target, hang=release)
        settle(d.scheduler.run_once, lambda: _others_fine(d, target))
        # Collections end at their deadline (0.5 s) whatever the hung GPU does.
        cycles_end_in_time(lambda: _cycle(d, sleep=0.0), 1.5, lambda: _others_fine(d, target))
        renders(d)
        target_sample = _by_index(d).get(str(target))
        if fn not in ("nvmlDeviceRegisterEvents", "nvmlDeviceGetSupportedEventTypes"):
            # Event registration runs on its own thread; everything else holds the GPU's worker.
            assert target_sample is None or not target_sample.up
        release.set()
        d.simulation.libnvml.faults.clear()

        def recovered():
            _cycle(d, sleep=0.05)
            s = _by_index(d).get(str(target))
            return s is not None and s.up
        wait_for(recovered, timeout=10)
        _others_fine(d, target)
    finally:
        release.set()


# -- the library itself ---------------------------------------------------------------------


def test_library_missing_at_start_then_installed(daemon):
    d = daemon
    nvml = d.simulation.libnvml
    nvml.library_missing = True
    d.scheduler.run_once()
    view = d.store.view()
    backend = view.results["nvidia"].backends[0]
    assert backend.up is False and "not found" in backend.reason
    assert view.devices() == []
    assert view.health["nvidia"].up  # a host without NVIDIA is not a failing collector
    renders(d, "gpuprobe_backend_up")
    nvml.library_missing = False

    def found():
        d.scheduler.run_once()
        return len(d.store.view().devices()) == 5
    wait_for(found, timeout=5)


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                                  pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH])
def test_library_fatal_at_init_is_retried(code, daemon):
    d = daemon
    rule = d.simulation.libnvml.faults.add("nvmlInit", error=code)
    d.scheduler.run_once()
    view = d.store.view()
    assert view.results["nvidia"].backends[0].up is False
    assert view.health["nvidia"].up is False  # unlike a missing library, this is a fault
    assert view.health["nvidia"].errors_total["library_fatal"] >= 1
    d.simulation.libnvml.faults._rules.remove(rule)

    def up():
        d.scheduler.run_once()
        return d.store.view().results["nvidia"].backends[0].up
    wait_for(up, timeout=5)


def test_library_vanishing_while_running_keeps_devices_listed_as_down(daemon):
    d = daemon
    nvml = d.simulation.libnvml
    _cycle(d)
    assert len(d.store.view().devices()) == 5
    nvml.library_missing = True  # every call now fails UNINITIALIZED
    _cycle(d)
    view = d.store.view()
    devs = view.devices()
    assert len(devs) == 5 and not any(s.up for s in devs)
    assert view.results["nvidia"].backends[0].up is False
    renders(d)
    nvml.library_missing = False
    _wait_all_up(d)


def test_enumeration_error_takes_the_backend_down_and_back():
    d = make_daemon(config={"nvidia": {"retry_initial": "10ms", "retry_max": "50ms",
                                       "discovery_interval": "1s"}})
    try:
        _cycle(d)
        d.simulation.libnvml.faults.add("nvmlDeviceGetCount",
                                     error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, times=1)
        time.sleep(1.1)  # rediscovery is due
        _cycle(d)
        assert d.store.view().results["nvidia"].backends[0].up is False
        _wait_all_up(d)
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
        d.simulation.libnvml.faults.add("nvmlDeviceGetCount", hang=release)
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
        renders(d)
        release.set()
        d.simulation.libnvml.faults.clear()
        wait_for(lambda: not stalled(), timeout=5)
        wait_for(lambda: all(s.up for s in d.store.view().devices()), timeout=5)
    finally:
        release.set()
        d.stop()


def test_gpu_answering_nothing_reads_down_and_comes_back(caplog, daemon):
    """Issue 11, defect 7: every call to one GPU failing with UNKNOWN (transient) left it
    up, exporting its static facts. It reads down with the reason, the others are fine, it
    is logged once, and it reads up again when calls answer."""
    d = daemon
    gpu_answering_nothing(d, d.simulation.libnvml.faults, pynvml.NVML_ERROR_UNKNOWN,
                          lambda: _cycle(d), lambda: _by_index(d)["1"],
                          lambda: _others_fine(d, 1), caplog)
