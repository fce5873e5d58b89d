"""The reliability benchmarks' own logic, without running a daemon: the soak scenario churns
pids as intended, and the fault runs' readings of /metrics and of the log are right."""

from __future__ import annotations

import sys
from pathlib import Path

from gpuprobe.probes.sim import ManualClock, Simulation
from gpuprobe.probes.sim.scenario import parse

from .conftest import load_benchmark

soak = load_benchmark("soak")
faults = load_benchmark("faults")
harness = sys.modules["_harness"]


def test_soak_scenario_churns_distinct_pids() -> None:
    accel, cycle, life, jobs = 2000.0, 7.0 * 2000, 2.6 * 2000, 48
    sim = Simulation(parse(soak.scenario(accel, cycle, life, jobs)), ManualClock(start=0.0))
    try:
        seen: set[int] = set()
        alive = []
        t = 0.0
        while t < 5 * cycle:
            procs = [p for d in sim.world.devices for p in d.processes_at(t)]
            alive.append(len(procs))
            seen |= {p.pid for p in procs}
            t += 0.25 * 2000  # a look every quarter of a wall second
        assert len(seen) == 5 * jobs * len(soak.DEVICES)  # new pids every cycle, none reused
        assert max(alive) <= 32 * len(soak.DEVICES)  # within the exporter's per-GPU cap
    finally:
        sim.close()


def test_fault_scenarios_parse() -> None:
    for flap in (False, True):
        sim = Simulation(parse(faults.scenario(flap)), ManualClock(start=0.0))
        sim.close()


def _exposition(gpu1_pci: str, gpu1_total: str) -> str:
    return "\n".join([
        'gpuprobe_device_up{gpu="0",uuid="A",vendor="amd"} 1.0',
        'gpuprobe_device_up{gpu="1",uuid="B",vendor="amd"} 1.0',
        'gpuprobe_device_info{gpu="0",model="MI300X",pci_bus_id="0000:18:00.0",uuid="A"} 1.0',
        f'gpuprobe_device_info{{gpu="1",model="W7900",pci_bus_id="{gpu1_pci}",uuid="B"}} 1.0',
        'gpuprobe_memory_total_bytes{gpu="0",uuid="A",vendor="amd"} 2e11',
        f'gpuprobe_memory_total_bytes{{gpu="1",uuid="B",vendor="amd"}} {gpu1_total}',
        "# a comment", ""])


def test_a_gpu_showing_another_gpus_identity_is_caught() -> None:
    before = faults._digest(_exposition("0000:28:00.0", "5e10"))
    assert before["amd/1"]["series"] == 3 and before["amd/0"]["up"] == 1
    assert faults._moved(faults._digest(_exposition("0000:28:00.0", "5e10")), before) == []
    assert faults._moved(faults._digest(_exposition("0000:18:00.0", "2e11")), before) == ["amd/1"]
    shared = faults._digest(_exposition("0000:28:00.0", "5e10").replace('uuid="B"', 'uuid="A"'))
    assert shared["amd/1"]["shared_uuid"] and not before["amd/1"]["shared_uuid"]
    # A value gone missing is not another GPU's identity.
    gone = faults._digest(_exposition("0000:28:00.0", "5e10").replace(
        'gpuprobe_memory_total_bytes{gpu="1"', "x{gpu=\"1\""))
    assert faults._moved(gone, before) == []


def test_log_lines_are_counted_by_stamp_and_identifier(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    log.write_text(
        "2026-01-01 00:00:01,000 WARNING gpuprobe.nvidia: GPU 2 (GPU-x) is down: lost\n"
        "2026-01-01 00:00:02,000 INFO gpuprobe.nvidia: GPU 2 (GPU-x): found again\n"
        "2026-01-01 00:00:03,000 ERROR gpuprobe: something about GPU-y\n"
        "Traceback (most recent call last):\n"
        "2026-01-01 00:01:30,000 INFO gpuprobe.nvidia: GPU 2 (GPU-x): found again\n")
    t0 = faults.datetime(2026, 1, 1).timestamp()
    assert faults.log_lines(log, t0, t0 + 60, "GPU-x") == 2
    assert faults.log_lines(log, t0, t0 + 60, None) == 4  # the traceback takes 00:00:03
    c = harness.LogCount.of(log)
    assert (c.lines, c.errors, c.warnings, c.tracebacks) == (5, 1, 1, 1)


def test_fit_and_percentiles() -> None:
    assert harness.linear_fit([0, 1, 2, 3], [1, 3, 5, 7]) == (2.0, 1.0)
    assert harness.linear_fit([0, 1], [0, 1]) is None
    assert harness.percentile([5, 1, 3, 2, 4], 50) == 3
    assert harness.percentile(list(range(1, 101)), 99) == 99
    assert harness.percentile([], 50) is None
