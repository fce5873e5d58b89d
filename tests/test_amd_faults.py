"""Fault injection on every amdsmi call the AMD backend makes: the rest keeps working.

As for NVML (test_nvidia_faults.py), the calls are recorded from a clean run against the
simulated amdsmi, then each is made to fail the ways amdsmi fails: NOT_SUPPORTED (2), no
permission (10), a transient RETRY (9), the device gone (NOT_FOUND, 31) and a call that
hangs. Library-level failures follow: the library missing, a version mismatch, an init that
hangs, the library going away while running. The NVIDIA GPU of the mixed scenario must not
notice any of it.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import generate_latest

from gpuprobe.probes.sim import ManualClock

from .conftest import make_daemon, wait_for
from .faultcheck import (
    cycles_end_in_time,
    gpu_answering_nothing,
    no_internal_errors,
    renders,
    settle,
    unsupported,
)
from .test_amd_backend import AMD_FAST, AMD_SCENARIO, amd_daemon, cycle

# Functions whose failure means the GPU cannot be identified at all during discovery.
IDENTIFYING = {"amdsmi_get_gpu_device_bdf", "amdsmi_get_processor_handles"}
GLOBAL = {"amdsmi_get_processor_handles", "amdsmi_get_gpu_event_notification"}


def _recorded_calls() -> dict[str, int]:
    """Every per-GPU amdsmi function a clean run calls, with the AMD GPU to fail it on
    (the MI300X, index 0, where it is called there)."""
    d = amd_daemon()
    try:
        for _ in range(3):
            cycle(d)
        calls = d.simulation.libamdsmi.calls_by_device
        wait_for(lambda: calls[("amdsmi_init_gpu_event_notification", 0)], timeout=10)
        seen: dict[str, set[int]] = {}
        for (fn, device), n in list(calls.items()):
            if device is not None and n:
                seen.setdefault(fn, set()).add(device)
    finally:
        d.stop()
    return {fn: min(devs) for fn, devs in sorted(seen.items())}


CALLS = _recorded_calls()


def test_the_matrix_covers_the_backend() -> None:
    for fn in ("amdsmi_get_gpu_memory_usage", "amdsmi_get_temp_metric", "amdsmi_get_power_info",
               "amdsmi_get_gpu_metrics_info", "amdsmi_get_pcie_info",
               "amdsmi_get_gpu_process_list", "amdsmi_get_gpu_ecc_count",
               "amdsmi_get_violation_status", "amdsmi_get_gpu_pci_throughput",
               "amdsmi_get_gpu_device_uuid", "amdsmi_get_gpu_compute_partition",
               "amdsmi_init_gpu_event_notification", "amdsmi_set_gpu_event_notification_mask",
               "amdsmi_get_power_cap_info", "amdsmi_get_gpu_fan_speed",
               "amdsmi_get_gpu_fan_speed_max", "amdsmi_get_gpu_xgmi_link_status"):
        assert fn in CALLS, fn
    assert len(CALLS) >= 25


def _devices(d) -> dict[tuple[str, str], object]:
    return {(s.identity.vendor, s.identity.index): s for s in d.store.view().devices()}


def _others_fine(d, target: int, fn: str = "") -> None:
    """Every GPU not behind the faulty AMD one is up with its values; NVIDIA untouched.
    When the failing call is the one that identifies a GPU, that GPU is simply not known
    (and the others' indices cannot be predicted): all known GPUs must then be fine."""
    devs = _devices(d)
    if fn in IDENTIFYING:
        by_model = {s.identity.model: s for (v, _), s in devs.items() if v == "amd"}
        others = [s for s in devs.values() if s.identity.vendor == "nvidia"
                  or s is by_model.get("AMD Radeon PRO W7900")]
    else:
        others = [s for (v, i), s in devs.items()
                  if v == "nvidia" or i.split("/")[0] != str(target)]
    assert any(v == "nvidia" for v, _ in devs) and len(others) >= 2
    for s in others:
        assert s.up, f"{s.identity.vendor} GPU {s.identity.index} went down: {s.down_reason}"
        assert s.memory.used_bytes is not None, f"GPU {s.identity.index} lost its values"


@pytest.mark.parametrize("code", [2, 10])
@pytest.mark.parametrize("fn", sorted(set(CALLS) - GLOBAL))
def test_unsupported_or_no_permission_is_absent_and_not_asked_again(fn, code):
    target = CALLS[fn]
    d = amd_daemon()
    try:
        after_two, after_four = unsupported(d, d.simulation.libamdsmi, fn, target, code,
                                            lambda: cycle(d), lambda: _others_fine(d, target, fn))
        if fn not in IDENTIFYING:
            assert _devices(d)[("amd", str(target))].up
            assert after_four == after_two, "asked again after it was unsupported"
    finally:
        d.stop()


@pytest.mark.parametrize("fn", sorted(set(CALLS) - GLOBAL))
def test_device_gone_takes_down_only_that_gpu(fn):
    target = CALLS[fn]
    d = amd_daemon()
    try:
        d.simulation.libamdsmi.faults.add(fn, target, error=31)
        settle(d.scheduler.run_once, lambda: _others_fine(d, target, fn))
        for _ in range(3):
            cycle(d)
            _others_fine(d, target, fn)
        renders(d)
        no_internal_errors(d)
    finally:
        d.stop()


@pytest.mark.parametrize("fn", sorted(set(CALLS) - GLOBAL))
def test_retry_is_transient_and_values_come_back(fn):
    target = CALLS[fn]
    clean, d = amd_daemon(), amd_daemon()
    try:
        for _ in range(4):
            cycle(clean)
        d.simulation.libamdsmi.faults.add(fn, target, error=9, times=1)
        settle(d.scheduler.run_once, lambda: _others_fine(d, target, fn))
        cycle(d)
        _others_fine(d, target, fn)
        for _ in range(3):
            cycle(d)
        _others_fine(d, target, fn)
        no_internal_errors(d)
        def mi300(x):
            return next(s for s in x.store.view().devices()
                        if s.identity.model == "AMD Instinct MI300X" and "/" not in
                        s.identity.index)

        got, want = mi300(d), mi300(clean)
        assert got.up
        for part in ("memory", "thermal", "power", "pcie", "errors"):
            a, b = getattr(got, part), getattr(want, part)
            assert {k for k in a.__dataclass_fields__ if getattr(a, k) not in (None, {})} == \
                {k for k in b.__dataclass_fields__ if getattr(b, k) not in (None, {})}, part
        assert set(got.utilization) == set(want.utilization)
    finally:
        d.stop()
        clean.stop()


@pytest.mark.parametrize("fn", sorted(set(CALLS) - GLOBAL))
def test_hung_call_costs_only_its_gpu(fn):
    target = CALLS[fn]
    d = amd_daemon()
    release = threading.Event()
    try:
        d.simulation.libamdsmi.faults.add(fn, target, hang=release)
        settle(d.scheduler.run_once, lambda: _others_fine(d, target, fn))
        cycles_end_in_time(lambda: cycle(d, advance=5.0), 2.5,
                           lambda: _others_fine(d, target, fn))
        renders(d)
        release.set()
        d.simulation.libamdsmi.faults.clear()

        def recovered() -> bool:
            cycle(d)
            amd = [s for (v, _), s in _devices(d).items() if v == "amd"]
            return len(amd) == 4 and all(s.up for s in amd)

        wait_for(recovered, timeout=15)
    finally:
        release.set()
        d.stop()


# -- the library as a whole ---------------------------------------------------------------

def _backend(d, name: str = "amd"):
    """The backend status the collectors published; an AssertionError (which settle()
    waits out) while no collector has published one yet."""
    found = next((b for r in d.store.view().results.values() for b in r.backends
                  if b.name == name), None)
    assert found is not None, f"no {name} backend status published yet"
    return found


def test_library_missing_reports_down_and_nvidia_carries_on() -> None:
    d = amd_daemon()
    try:
        d.simulation.libamdsmi.library_missing = True
        cycle(d)
        cycle(d)
        assert not _backend(d).up and _backend(d, "nvidia").up
        assert "amdsmi_init failed" in _backend(d).reason
        assert _devices(d)[("nvidia", "0")].up
        names = renders(d)
        assert "gpuprobe_backend_up" in names
        d.simulation.libamdsmi.library_missing = False  # installed while running: found again
        wait_for(lambda: (cycle(d, advance=1.0), _backend(d).up)[1], timeout=10)
        assert _devices(d)[("amd", "0")].up
    finally:
        d.stop()


def test_version_mismatch_is_refused_and_exported() -> None:
    d = amd_daemon()
    try:
        d.simulation.libamdsmi.rocm_version = "6.4.1"
        cycle(d)
        b = _backend(d)
        assert not b.up and b.version_mismatch is True
        assert "does not match the installed ROCm 6.4.1" in b.reason
        text = generate_latest(d.registry).decode()
        assert 'gpuprobe_backend_version_mismatch{backend="amd"} 1.0' in text
        health = d.store.view().health["amd"]
        assert not health.up  # a real fault: the collector fails, alerts can fire
        assert _devices(d)[("nvidia", "0")].up
        assert d.simulation.libamdsmi.calls["amdsmi_get_gpu_memory_usage"] == 0
    finally:
        d.stop()


def test_hung_init_is_abandoned_and_retried() -> None:
    config = {**AMD_FAST, "amd": {**AMD_FAST["amd"], "init_timeout": "500ms"}}
    d = make_daemon(AMD_SCENARIO, config, ManualClock(start=60.0))
    release = threading.Event()
    try:
        d.simulation.libamdsmi.faults.add("amdsmi_init", hang=release, times=1)
        for _ in range(3):
            t0 = time.monotonic()
            cycle(d, advance=1.0)
            assert time.monotonic() - t0 < 2.5
            time.sleep(0.3)
        assert not _backend(d).up
        assert "did not return within 0.5s" in _backend(d).reason
        assert _devices(d)[("nvidia", "0")].up
        # the abandoned init stays hung; a new attempt (the fault was for one call) succeeds
        wait_for(lambda: (cycle(d, advance=1.0), _backend(d).up)[1], timeout=15)
    finally:
        release.set()
        d.stop()


def test_library_going_away_while_running_and_coming_back() -> None:
    d = amd_daemon()
    try:
        _started(d)
        rule = d.simulation.libamdsmi.faults.add("*", error=32)  # NOT_INIT from every call
        cycle(d)
        cycle(d)
        assert not _backend(d).up
        assert all(not s.up for (v, _), s in _devices(d).items() if v == "amd")
        assert _devices(d)[("nvidia", "0")].up
        d.simulation.libamdsmi.faults.clear()
        del rule
        wait_for(lambda: (cycle(d, advance=1.0), _backend(d).up)[1], timeout=10)
        wait_for(lambda: (cycle(d, advance=1.0),
                          _devices(d)[("amd", "0")].up)[1], timeout=10)
    finally:
        d.stop()


def test_device_vanishing_and_returning() -> None:
    """A GPU that drops off the bus is reported down, stays listed, and comes back."""
    scenario_fall = {"at": "2m", "kind": "fall_off_bus", "duration": "2m"}
    scenario = {**AMD_SCENARIO, "devices": [dict(x) for x in AMD_SCENARIO["devices"]]}
    scenario["devices"][2]["events"] = [scenario_fall]
    d = make_daemon(scenario, AMD_FAST, ManualClock(start=60.0))
    try:
        _started(d)
        d.simulation.world.clock.t = 150.0
        cycle(d, advance=1.0)
        cycle(d, advance=1.0)
        radeon = _devices(d)[("amd", "1")]
        assert not radeon.up and radeon.down_reason
        _others_fine(d, 1)
        d.simulation.world.clock.t = 260.0
        wait_for(lambda: (cycle(d, advance=1.0), _devices(d)[("amd", "1")].up)[1], timeout=15)
    finally:
        d.stop()


def _amd_collector(d):
    return next(c for c in d.scheduler.collectors if c.name == "amd")


def _started(d) -> None:
    """The collectors run (at the clock's present time) until the AMD library is up and all
    four AMD devices read up with their values: the first cycle on a loaded machine can end
    with the preflight or the first discovery still under way (see faultcheck.settle)."""
    def all_up() -> None:
        assert _backend(d).up
        amd = [s for (v, _), s in _devices(d).items() if v == "amd"]
        assert len(amd) == 4 and all(s.up and s.memory.used_bytes is not None for s in amd)
    settle(d.scheduler.run_once, all_up)


def test_stuck_address_read_does_not_shift_other_gpus_onto_its_handle() -> None:
    """Issue 11, defect 3: while GPU 0's amdsmi_get_gpu_device_bdf hangs, its handles are
    skipped in discovery; GPU 1 must keep its own address, identity and figures (the old
    pairing gave GPU 1's address to GPU 0's handle: GPU 0's telemetry under GPU 1's labels)."""
    from gpuprobe.probes.backend import STUCK_SECONDS

    d = amd_daemon()
    release = threading.Event()
    try:
        _started(d)
        before = {i: s for (v, i), s in _devices(d).items() if v == "amd"}
        assert before["1"].identity.model == "AMD Radeon PRO W7900"
        d.simulation.libamdsmi.faults.add("amdsmi_get_gpu_device_bdf", 0, hang=release)
        session = _amd_collector(d).session
        stuck = session._worker("handle0")
        checked = 0
        end = time.monotonic() + 30  # generous: the hung handle counts as stuck after 2 s
        while checked < 3 and time.monotonic() < end:
            session.rediscover_soon()
            cycle(d, advance=1.0)
            if stuck.running_for() > STUCK_SECONDS:
                checked += 1  # discovery now skips the stuck handles
            now = {i: s for (v, i), s in _devices(d).items() if v == "amd"}
            for index in ("0", "1"):
                got, want = now[index], before[index]
                assert got.up, (index, got.down_reason)
                assert got.identity.uuid == want.identity.uuid, index
                assert got.identity.pci_bus_id == want.identity.pci_bus_id, index
                assert got.identity.model == want.identity.model, index
                assert got.memory.total_bytes == want.memory.total_bytes, index
            time.sleep(0.2)
        assert checked == 3, "the bdf call never counted as stuck"
    finally:
        release.set()
        d.stop()


def test_gpu_answering_nothing_reads_down_and_comes_back(caplog) -> None:
    """Issue 11, defect 7 on AMD: every call to the Radeon failing with RETRY (transient)
    reads it down, not up with its static facts; it reads up again when calls answer."""
    d = amd_daemon()
    try:
        _started(d)
        gpu_answering_nothing(d, d.simulation.libamdsmi.faults, 9, lambda: cycle(d),
                              lambda: _devices(d)[("amd", "1")], lambda: _others_fine(d, 1),
                              caplog)
    finally:
        d.stop()


def test_a_gpu_hung_through_a_rediscovery_stays_listed_down() -> None:
    """A hung telemetry call on the MI300X's worker, then a rediscovery: the GPU must stay
    on /metrics, down, not vanish until the hang ends (benchmarks/faults.py saw it gone for
    as long as the hang lasted, so an alert on device_up == 0 stopped firing)."""
    from gpuprobe.probes.backend import STUCK_SECONDS

    d = amd_daemon()
    release = threading.Event()
    try:
        _started(d)
        uuid = _devices(d)[("amd", "0")].identity.uuid
        d.simulation.libamdsmi.faults.add("amdsmi_get_gpu_memory_usage", 0, hang=release)
        session = _amd_collector(d).session
        stuck = session._worker(session.physical()[0].bdf)
        end = time.monotonic() + 30
        rediscovered = 0
        while rediscovered < 2 and time.monotonic() < end:
            cycle(d, advance=1.0)
            if stuck.running_for() > STUCK_SECONDS:
                session.rediscover_soon()
                cycle(d, advance=1.0)
                rediscovered += 1
                s = _devices(d).get(("amd", "0"))
                assert s is not None, "the hung GPU vanished from the snapshot"
                assert s.identity.uuid == uuid and not s.up
                assert f'uuid="{uuid}"' in generate_latest(d.registry).decode()
            time.sleep(0.2)
        assert rediscovered == 2, "the telemetry call never counted as stuck"
        _others_fine(d, 0)
    finally:
        release.set()
        d.stop()
