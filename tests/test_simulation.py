"""The simulator: scenario files, memory shapes, counters, the fake /proc, repeats."""

from __future__ import annotations

import os

import pytest

from gpuprobe.probes.host import ProcessResolver
from gpuprobe.probes.sim import ManualClock, Simulation
from gpuprobe.probes.sim.patterns import MemoryPattern, smooth_noise
from gpuprobe.probes.sim.scenario import ScenarioError, load, parse, parse_rate, parse_size
from gpuprobe.probes.sim.world import PID_CYCLE_STRIDE, SimWorld

MIB, GIB = 2**20, 2**30


def test_sizes_and_rates():
    assert parse_size("80GiB", "k") == 80 * GIB
    assert parse_size("1.5 MiB", "k") == 1.5 * MIB
    assert parse_size("2GB", "k") == 2e9
    assert parse_size(1024, "k") == 1024
    assert parse_rate("20MiB/min", "k") == pytest.approx(20 * MIB / 60)
    assert parse_rate("1GiB/h", "k") == pytest.approx(GIB / 3600)
    with pytest.raises(ScenarioError, match="k: expected a size"):
        parse_size("lots", "k")


def test_memory_shapes():
    leak = MemoryPattern("leak", base=GIB, rate=MIB)
    assert leak.at(0) == GIB and leak.at(60) == GIB + 60 * MIB
    saw = MemoryPattern("sawtooth", base=GIB, peak=3 * GIB, period=100)
    assert saw.at(0) == GIB and saw.at(50) == 2 * GIB and saw.at(100) == GIB
    warm = MemoryPattern("warmup", base=0, peak=10 * GIB, ramp=100)
    assert warm.at(50) == 5 * GIB and warm.at(100) == warm.at(10_000) == 10 * GIB
    stairs = MemoryPattern("staircase", base=0, step=64 * MIB, period=60)
    assert stairs.at(59) == 0 and stairs.at(60) == 64 * MIB and stairs.at(130) == 128 * MIB
    epochs = MemoryPattern("epochs", base=GIB, peak=5 * GIB, period=100, ramp=10)
    assert epochs.at(5) == 5 * GIB and epochs.at(50) == GIB and epochs.at(105) == 5 * GIB
    replay = MemoryPattern("replay", points=((0, 0), (10, 100), (20, 50)))
    assert replay.at(5) == 50 and replay.at(15) == 75 and replay.at(99) == 50
    freed = MemoryPattern("leak", base=GIB, rate=MIB, free_at=100)
    assert freed.at(99) > GIB and freed.at(100) == 0
    noisy = MemoryPattern("constant", base=GIB, noise=MIB)
    assert abs(noisy.at(10, seed=1, pid=2) - GIB) <= MIB
    assert noisy.at(10, seed=1, pid=2) == noisy.at(10, seed=1, pid=2)  # deterministic
    assert all(-1 <= smooth_noise(3, 4, t) < 1 for t in range(0, 1000, 7))


def test_replay_from_csv(tmp_path):
    (tmp_path / "trace.csv").write_text("age_s,bytes\n0,1048576\n60,2097152\n")
    s = tmp_path / "s.yaml"
    s.write_text("devices:\n  - vendor: nvidia\n    processes:\n      - pid: 10\n"
                 "        memory: {pattern: replay, file: trace.csv}\n")
    scenario = load(s)
    assert scenario.devices[0].processes[0].memory.at(30) == 1.5 * MIB


@pytest.mark.parametrize("data, message", [
    ({"devices": []}, "a scenario needs at least one device"),
    ({"devices": [{"vendor": "intel"}]}, "devices[0].vendor: must be nvidia or amd"),
    ({"devices": [{"processes": [{"pid": 5, "memory": {"pattern": "grow"}}]}]},
     "devices[0].processes[0].memory.pattern: must be one of"),
    ({"devices": [{"events": [{"at": "1m", "kind": "xid"}]}]},
     "devices[0].events[0].code: an xid event needs a code"),
    ({"devices": [{"unsupported": ["warp_drive"]}]}, "unknown feature(s) ['warp_drive']"),
    ({"devices": [{"processes": [{"pid": 5, "memory": {"pattern": "constant"}}]},
                  {"processes": [{"pid": 5, "memory": {"pattern": "constant"}}]}]},
     "pid(s) [5] used by more than one process"),
    ({"time_acceleration": 0, "devices": [{}]}, "time_acceleration: must be between"),
    ({"devices": [{"pcie": {"generation": 6}}]}, "devices[0].pcie.generation: must be between"),
])
def test_scenario_errors_name_the_key(data, message):
    with pytest.raises(ScenarioError) as e:
        parse(data, "s.yaml")
    assert message in str(e.value) and str(e.value).startswith("s.yaml: ")


def test_builtin_default_scenario_has_every_trouble():
    s = load(None)
    kinds = {e.kind for d in s.devices for e in d.events}
    assert {"thermal_throttle", "fall_off_bus", "xid"} <= kinds
    patterns = {p.memory.kind for d in s.devices for p in d.processes}
    assert {"leak", "sawtooth", "warmup"} <= patterns
    assert any(d.generation < d.max_generation or d.width < d.max_width for d in s.devices)
    assert any(d.instances for d in s.devices)
    assert s.time_acceleration == 60


def test_counters_only_grow_and_a_repeat_gives_new_pids():
    scenario = parse({"duration": "10m", "devices": [{"processes": [
        {"pid": 7, "start": "1m", "end": "9m", "memory": {"pattern": "constant", "size": GIB}}],
        "events": [{"at": "2m", "kind": "thermal_throttle", "duration": "1m"}]}]})
    clock = ManualClock()
    world = SimWorld(scenario, clock, proc_tree=False)
    dev = world.devices[0]
    last = None
    for t in range(0, 1500, 30):
        totals = dev.totals(float(t))
        if last is not None:
            assert all(totals[k] >= last[k] for k in totals)
        last = totals
    # 1 min in each 10-min cycle; t reaches 1470 s, inside the third cycle's event
    assert last["thr_hw_thermal"] == pytest.approx(180.0, abs=10)
    assert [p.pid for p in dev.processes_at(120)] == [7]
    assert dev.processes_at(30) == ()  # not started yet
    assert [p.pid for p in dev.processes_at(600 + 120)] == [7 + PID_CYCLE_STRIDE]


def test_fake_proc_tree_matches_the_processes():
    sim = Simulation(parse({"devices": [{"processes": [
        {"pid": 77, "name": "job", "container": "cd" * 32, "end": "1m",
         "memory": {"pattern": "constant", "size": GIB}}]}]}), ManualClock())
    try:
        world, root = sim.world, sim.proc_root
        world.sync_processes(10.0, world.devices[0])
        proc = ProcessResolver(root).resolve(77)
        assert proc.name == "job" and proc.container_id == "cd" * 32
        world.sync_processes(120.0, world.devices[0])  # it ended
        assert not os.path.exists(os.path.join(root, "77"))
    finally:
        sim.close()
    assert not os.path.exists(root)


def test_simulated_h100_answers_as_the_real_one_did():
    """Issue 13: values the simulated NVML got wrong, against the real H100 run recorded in
    docs/hardware/h100-2026-11-22/nvml_facts.json (supported clock-event reasons 0x1FF, not
    0xFF; supported event types 0xFF9F, not 0xB; fields 1 and 142-145 as unsigned long
    long)."""
    import json

    import pynvml

    from .conftest import ROOT

    facts = json.loads((ROOT / "docs" / "hardware" / "h100-2026-11-22" / "nvml_facts.json")
                       .read_text())["devices"][0]
    sim = Simulation(load(None), ManualClock(60))
    try:
        lib = sim.nvml
        lib.nvmlInit()
        h = next(lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())
                 if "H100" in lib.nvmlDeviceGetName(lib.nvmlDeviceGetHandleByIndex(i)))
        assert lib.nvmlDeviceGetSupportedClocksEventReasons(h) == \
            facts["throttle_supported"]["value"]
        assert lib.nvmlDeviceGetSupportedEventTypes(h) == facts["supported_events"]["value"]
        names = {1: "ECC_CURRENT", 142: "REMAPPED_COR", 143: "REMAPPED_UNC",
                 144: "REMAPPED_PENDING", 145: "REMAPPED_FAILURE"}
        got = lib.nvmlDeviceGetFieldValues(h, list(names))
        for v in got:
            assert v.nvmlReturn == pynvml.NVML_SUCCESS
            assert v.valueType == facts["fields"][names[v.fieldId]]["type"], names[v.fieldId]
    finally:
        sim.close()


def test_simulated_idle_h100_reads_as_the_recorded_one():
    """Issue 13: an idle, error-free H100 as docs/hardware/h100-2026-11-22/nvml_facts.json
    recorded it, through the real pynvml: P0, a Gen5 link, encoder and decoder sampled over
    100 ms, and field 169 (L0-to-recovery) nonzero as an unsigned int that stays put while
    the link makes no errors."""
    import json

    from .conftest import ROOT

    facts = json.loads((ROOT / "docs" / "hardware" / "h100-2026-11-22" / "nvml_facts.json")
                       .read_text())["devices"][0]
    clock = ManualClock(60)
    sim = Simulation(parse({"seed": 3, "devices": [{"vendor": "nvidia"}]}), clock)
    try:
        lib = sim.nvml
        lib.nvmlInit()
        h = lib.nvmlDeviceGetHandleByIndex(0)
        assert lib.nvmlDeviceGetName(h) == facts["name"]["value"]
        assert lib.nvmlDeviceGetPerformanceState(h) == facts["pstate"]["value"] == 0
        assert lib.nvmlDeviceGetCurrPcieLinkGeneration(h) == facts["pcie_gen"]["value"] == 5
        assert lib.nvmlDeviceGetEncoderUtilization(h) == facts["encoder"]["value"]
        assert lib.nvmlDeviceGetDecoderUtilization(h) == facts["decoder"]["value"]
        recovery = facts["fields"]["PCIE_L0_TO_RECOVERY"]
        first = lib.nvmlDeviceGetFieldValues(h, [169])[0]
        assert first.valueType == recovery["type"]
        assert first.value.uiVal > 0
        clock.advance(3600)
        assert lib.nvmlDeviceGetFieldValues(h, [169])[0].value.uiVal == first.value.uiVal
    finally:
        sim.close()


def test_each_simulation_has_its_own_pynvml_over_a_simulated_c_library():
    """Simulation.nvml is the installed pynvml's own code, loaded privately: its wrappers
    call the simulated C symbols (versioned ones included), a symbol the library lacks
    is NVML's FUNCTION_NOT_FOUND, and two simulations share no NVML state."""
    import pynvml

    a = Simulation(parse({"seed": 1, "devices": [{"vendor": "nvidia"}]}), ManualClock(60))
    b = Simulation(parse({"seed": 2, "devices": [{"vendor": "nvidia"}]}), ManualClock(60))
    try:
        assert a.nvml is not pynvml and a.nvml is not b.nvml
        assert a.nvml.__file__ == pynvml.__file__
        a.nvml.nvmlInit()
        with pytest.raises(b.nvml.NVMLError_Uninitialized):
            b.nvml.nvmlDeviceGetCount()  # b's process never initialised NVML
        h = a.nvml.nvmlDeviceGetHandleByIndex(0)
        assert a.nvml.nvmlDeviceGetMemoryInfo(h, a.nvml.nvmlMemory_v2).reserved == 512 * 2**20
        assert a.libnvml.calls["nvmlDeviceGetMemoryInfo"] == 1  # the _v2 symbol
        with pytest.raises(a.nvml.NVMLError_FunctionNotFound):
            a.nvml.nvmlDeviceGetMinMaxFanSpeed(h)
        a.libnvml.faults.add("nvmlDeviceGetMemoryInfo", 0, error=pynvml.NVML_ERROR_GPU_IS_LOST)
        with pytest.raises(a.nvml.NVMLError_GpuIsLost):
            a.nvml.nvmlDeviceGetMemoryInfo(h)
    finally:
        a.close()
        b.close()


def test_a_library_missing_at_load_is_not_found_and_found_once_installed():
    sim = Simulation(parse({"seed": 1, "devices": [{"vendor": "nvidia"}]}), ManualClock(60))
    try:
        sim.libnvml.library_missing = True
        with pytest.raises(sim.nvml.NVMLError_LibraryNotFound):
            sim.nvml.nvmlInit()
        sim.libnvml.library_missing = False
        sim.nvml.nvmlInit()  # pynvml tries to load it again
        assert sim.nvml.nvmlDeviceGetCount() == 1
        sim.libnvml.library_missing = True  # gone while loaded: every call fails
        with pytest.raises(sim.nvml.NVMLError_Uninitialized):
            sim.nvml.nvmlDeviceGetCount()
    finally:
        sim.close()


def test_fake_proc_tree_syncs_the_asking_device_only():
    """A process list of one GPU writes and removes that GPU's entries, never another's."""
    sim = Simulation(parse({"devices": [
        {"processes": [{"pid": 70, "end": "1m", "memory": {"pattern": "constant"}}]},
        {"processes": [{"pid": 80, "memory": {"pattern": "constant"}}]}]}), ManualClock())
    try:
        world, root = sim.world, sim.proc_root
        first, second = world.devices
        world.sync_processes(10.0, first)
        assert os.path.exists(os.path.join(root, "70"))
        assert not os.path.exists(os.path.join(root, "80"))
        world.sync_processes(10.0, second)
        world.sync_processes(120.0, first)  # 70 ended; 80 is the second GPU's to keep
        assert not os.path.exists(os.path.join(root, "70"))
        assert os.path.exists(os.path.join(root, "80"))
    finally:
        sim.close()
