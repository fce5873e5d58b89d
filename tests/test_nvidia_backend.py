"""The real NVIDIA backend against the simulated NVML: values, units, MIG, GPM, events."""

from __future__ import annotations

import time

import pytest

from gpuprobe.probes.sim import ManualClock

from .conftest import SMALL_SCENARIO, make_daemon, wait_for

GIB = 2**30
MIB = 2**20


def devices(d):
    return {s.identity.index: s for s in d.store.view().devices()}


def test_values_are_converted_to_base_units(daemon):
    daemon.scheduler.run_once()
    gpu = devices(daemon)["0"]
    assert gpu.up
    # Hand-computed from the scenario: one 1 GiB process, utilization 0.5.
    assert gpu.memory.total_bytes == 80 * GIB
    assert gpu.memory.used_bytes == 1 * GIB
    assert gpu.memory.reserved_bytes == 512 * MIB
    assert gpu.memory.free_bytes == 80 * GIB - 512 * MIB - 1 * GIB
    assert gpu.power.draw_watts == pytest.approx(70 + (700 - 70) * 0.5)  # mW -> W
    assert gpu.power.limit_watts == 700.0
    assert gpu.thermal.temperatures["gpu"] == 50.0  # 32 + (68 - 32) * 0.5
    assert gpu.thermal.temperatures["memory"] == 56.0
    assert gpu.thermal.thresholds[("gpu", "slowdown")] == 87.0
    assert gpu.thermal.thresholds[("gpu", "shutdown")] == 92.0
    assert gpu.clocks.current["sm"] == 1571e6  # int(MHz) * 1e6
    assert gpu.clocks.maximum["sm"] == 1980e6
    assert gpu.utilization["gpu"] == 0.5
    assert gpu.pcie.generation == 5 and gpu.pcie.max_generation == 5
    assert gpu.pcie.width == 16 and gpu.pcie.max_width == 16
    assert gpu.errors.ecc_enabled is True
    assert gpu.errors.ecc_corrected_total == 0
    assert gpu.errors.ecc_corrected_lifetime_total == 12
    assert gpu.throttle.active == frozenset()
    assert "hw_thermal" in gpu.throttle.supported
    assert gpu.identity.architecture == "hopper"
    assert gpu.identity.compute_capability == "9.0"
    assert gpu.identity.pci_bus_id == "00000000:18:00.0"


def test_energy_counter_in_joules(daemon):
    clock = daemon.simulation.world.clock
    daemon.scheduler.run_once()
    first = devices(daemon)["0"]
    clock.advance(10.0)
    daemon.scheduler.run_once()
    second = devices(daemon)["0"]
    # 385 W for 10 s is 3850 J; NVML reports mJ.
    assert second.power.energy_joules - first.power.energy_joules == pytest.approx(3850, rel=1e-3)


def _true_pcie_bytes(d, index: int) -> float:
    dev = d.simulation.world.devices[index]
    return dev.totals(d.simulation.world.now())["pcie_tx"]


def test_pcie_bytes_on_hopper_come_from_gpm_rates(daemon):
    clock = daemon.simulation.world.clock
    seen, truth = [], []
    for _ in range(5):
        daemon.scheduler.run_once()
        seen.append(devices(daemon)["0"].pcie.tx_bytes_total)
        truth.append(_true_pcie_bytes(daemon, 0))
        time.sleep(0.12)
        clock.advance(5.0)
    assert seen[0] is None  # no GPM rate before the second sample, and no field fallback
    assert seen[1] == 0.0
    # GPM rates integrated over the poll intervals give the bytes that crossed the link.
    assert seen[4] - seen[1] == pytest.approx(truth[4] - truth[1], rel=0.02)


def test_pcie_bytes_follow_a_wrapping_32_bit_field_without_gpm():
    scenario = {"seed": 3, "devices": [dict(SMALL_SCENARIO["devices"][0], unsupported=["gpm"])]}
    d = make_daemon(scenario)
    try:
        clock = d.simulation.world.clock
        seen, truth = [], []
        for _ in range(8):  # ~3 GB per second of scenario: the field wraps every ~1.4 s
            d.scheduler.run_once()
            seen.append(devices(d)["0"].pcie.tx_bytes_total)
            truth.append(_true_pcie_bytes(d, 0))
            clock.advance(1.0)
        assert seen[0] == 0.0
        assert seen[7] - seen[0] == pytest.approx(truth[7] - truth[0], rel=1e-6)
        assert truth[7] - truth[0] > 2**32  # it did wrap, more than once
    finally:
        d.stop()


def test_gpm_activity_on_hopper_only(daemon):
    clock = daemon.simulation.world.clock
    daemon.scheduler.run_once()
    time.sleep(0.12)  # GPM samples must be more than 100 ms apart
    clock.advance(5.0)
    daemon.scheduler.run_once()
    devs = devices(daemon)
    assert devs["0"].activity.sm_active == pytest.approx(0.5 * 0.92, rel=1e-6)
    assert devs["0"].activity.sm_occupancy == pytest.approx(0.5 * 0.38, rel=1e-6)
    assert devs["1"].activity.tensor_active == pytest.approx(0.25 * 0.30, rel=1e-6)
    assert devs["2"].activity.sm_active is None  # Ampere: no GPM, absent rather than 0
    assert devs["2"].utilization == {}  # MIG-enabled: NVML utilization unsupported


def test_mig_instances_are_devices_with_their_parent(daemon):
    daemon.scheduler.run_once()
    devs = devices(daemon)
    parent = devs["2"]
    assert {"2/1", "2/2"} <= set(devs)
    for idx in ("2/1", "2/2"):
        child = devs[idx]
        assert child.identity.parent_uuid == parent.identity.uuid
        assert child.identity.uuid.startswith("MIG-")
        assert child.identity.partition == "3g.40gb"
        assert child.memory.total_bytes == 40 * GIB
    assert devs["2/2"].memory.used_bytes == 3 * GIB
    procs = daemon.store.view().results["nvidia_processes"].processes
    by_pid = {p.pid: p for p in procs}
    # The process shows on its instance, and only there.
    assert by_pid[3001].device_uuid == devs["2/2"].identity.uuid
    assert sum(1 for p in procs if p.pid == 3001) == 1


def test_processes_have_name_start_time_and_container(daemon):
    daemon.scheduler.run_once()
    procs = {p.pid: p for p in daemon.store.view().results["nvidia_processes"].processes}
    p = procs[1001]
    assert p.name == "trainer"
    assert p.used_memory_bytes == GIB
    assert p.container_id == "ab" * 32
    assert p.start_ticks is not None
    assert procs[2001].container_id is None


def test_xid_events_counted_by_code_with_critical_codes_at_zero():
    scenario = dict(SMALL_SCENARIO)
    scenario["devices"] = [dict(SMALL_SCENARIO["devices"][0], events=[
        {"at": "2m", "kind": "xid", "code": 31, "count": 3, "spacing": "1s"},
        {"at": "2m", "kind": "xid", "code": 48}])]
    d = make_daemon(scenario)
    try:
        d.scheduler.run_once()
        uuid = devices(d)["0"].identity.uuid
        counts = d.store.view().results["nvidia_events"].xid_counts[uuid]
        assert counts[79] == 0 and counts[48] == 0  # pre-registered critical codes
        assert 31 not in counts
        d.simulation.world.clock.advance(120.0)  # past the burst

        def burst_seen():
            d.scheduler.run_once()
            c = d.store.view().results["nvidia_events"].xid_counts[uuid]
            return c.get(31) == 3 and c.get(48) == 1
        wait_for(burst_seen, timeout=5)
    finally:
        d.stop()


def test_device_that_falls_off_the_bus_is_down_then_found_again():
    scenario = {"seed": 2, "devices": [
        dict(SMALL_SCENARIO["devices"][0]),
        dict(SMALL_SCENARIO["devices"][1],
             events=[{"at": "2m", "kind": "fall_off_bus", "duration": "1m"}]),
    ]}
    clock = ManualClock(start=60.0)
    d = make_daemon(scenario, clock=clock)
    try:
        d.scheduler.run_once()
        assert all(s.up for s in devices(d).values())
        clock.t = 150.0  # off the bus
        d.scheduler.run_once()
        devs = devices(d)
        assert devs["1"].up is False
        assert devs["1"].memory.used_bytes is None  # no stale values for a lost GPU
        assert devs["0"].up and devs["0"].memory.used_bytes == GIB
        clock.t = 200.0  # back; its old handle is stale, it is found again by UUID

        def back():
            d.scheduler.run_once()
            return devices(d)["1"].up
        wait_for(back, timeout=5)
        assert devices(d)["1"].memory.used_bytes == 2 * GIB
        health = d.store.view().health.values()
        assert sum(h.errors_total.get("device_fatal", 0) for h in health) >= 1
    finally:
        d.stop()


def test_unsupported_features_are_absent_not_zero():
    scenario = {"seed": 4, "devices": [dict(SMALL_SCENARIO["devices"][0], unsupported=[
        "power_limit", "memory_temperature", "ecc", "gpm", "encoder", "bar1"])]}
    d = make_daemon(scenario)
    try:
        d.scheduler.run_once()
        time.sleep(0.12)
        d.scheduler.run_once()
        gpu = devices(d)["0"]
        assert gpu.power.limit_watts is None
        assert "memory" not in gpu.thermal.temperatures
        assert gpu.errors.ecc_enabled is None and gpu.errors.ecc_corrected_total is None
        assert gpu.activity.sm_active is None
        assert "encoder" not in gpu.utilization
        assert gpu.memory.bar1_total_bytes is None
        assert gpu.power.draw_watts is not None  # the rest still there
    finally:
        d.stop()


def _metric(d, name: str) -> dict[tuple, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(d.registry).decode()
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def test_process_memory_nvml_cannot_tell_is_absent_not_zero():
    """NVML gives NVML_VALUE_NOT_AVAILABLE for a process's used memory where it cannot tell
    (in a container without permission, on some MIG set-ups): pynvml turns it into None.
    The process is listed and counted, its memory absent, never 0."""
    scenario = {"seed": 5, "devices": [dict(SMALL_SCENARIO["devices"][0],
                                            unsupported=["process_memory"])]}
    d = make_daemon(scenario)
    try:
        d.scheduler.run_once()
        procs = {p.pid: p for p in d.store.view().results["nvidia_processes"].processes}
        assert procs[1001].used_memory_bytes is None
        assert procs[1001].name == "trainer"
        assert not any(dict(k).get("pid") == "1001"
                       for k in _metric(d, "gpuprobe_process_memory_bytes"))
        assert list(_metric(d, "gpuprobe_device_processes").values()) == [1.0]
        assert devices(d)["0"].memory.used_bytes == GIB  # the device's own count stays
    finally:
        d.stop()


def test_pcie_recoveries_of_a_clean_link_are_a_flat_nonzero_baseline(daemon):
    """Field 169 (L0-to-recovery transitions) is not 0 on a healthy link: the H100 of
    docs/hardware/ read 326 idle and error-free. It is exported as the counter it is, and
    it does not grow while the link makes no errors (no replays in this scenario)."""
    daemon.scheduler.run_once()
    first = devices(daemon)["0"].pcie.recoveries_total
    daemon.simulation.world.clock.advance(3600.0)
    daemon.scheduler.run_once()
    gpu = devices(daemon)["0"]
    assert first and first > 0
    assert gpu.pcie.recoveries_total == first
    assert gpu.pcie.replays_total == 0
    exported = _metric(daemon, "gpuprobe_pcie_link_recoveries_total")
    assert first in exported.values()
    assert daemon.store.view().health["nvidia"].up


def test_idle_p_state_and_link_follow_the_model():
    """An idle H100 stays in P0 on its Gen5 link, as the recorded one did; an idle A100
    (this scenario's older part) drops to P8 and Gen1."""
    idle = [dict(SMALL_SCENARIO["devices"][0], processes=[]),
            {"vendor": "nvidia", "model": "NVIDIA A100-SXM4-80GB", "architecture": "ampere",
             "pcie": {"max_generation": 4}}]
    d = make_daemon({"seed": 6, "devices": idle})
    try:
        d.scheduler.run_once()
        h100, a100 = devices(d)["0"], devices(d)["1"]
        assert h100.performance_state == 0 and h100.pcie.generation == 5
        assert a100.performance_state == 8 and a100.pcie.generation == 1
    finally:
        d.stop()
