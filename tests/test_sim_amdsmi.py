"""The simulated libamd_smi.so under the real amdsmi 7.0.2 package: what the binding makes of
what the simulated library returns (shapes, units, 'N/A', exceptions, traps)."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

from gpuprobe.probes.sim import ManualClock, Simulation
from gpuprobe.probes.sim.scenario import load, parse

MIB, GIB = 2**20, 2**30


@pytest.fixture
def sim():
    s = Simulation(load(None), ManualClock(90 * 60))  # 1h30m: GPU 6 runs hot
    s.amdsmi.amdsmi_init()
    yield s
    s.close()


def handles(sim):
    return sim.amdsmi.amdsmi_get_processor_handles()


def test_handles_partitions_and_identity(sim):
    lib = sim.amdsmi
    hs = handles(sim)
    assert len(hs) == 3 and all(isinstance(h, ctypes.c_void_p) for h in hs)
    assert len({h.value for h in hs}) == 3
    mi0, mi1, radeon = hs
    bdf0, bdf1 = lib.amdsmi_get_gpu_device_bdf(mi0), lib.amdsmi_get_gpu_device_bdf(mi1)
    assert bdf0.endswith(".0") and bdf1.endswith(".1") and bdf0[:-1] == bdf1[:-1]
    assert len(bdf0.split(":")[0]) == 4 and bdf0 == bdf0.lower()
    assert len(lib.amdsmi_get_gpu_device_uuid(mi0)) == 36
    # as the real library: the partitions of a GPU share its UUID, and a serial-less part
    # gets one from its device id
    assert lib.amdsmi_get_gpu_device_uuid(mi0) == lib.amdsmi_get_gpu_device_uuid(mi1)
    assert lib.amdsmi_get_gpu_device_uuid(radeon) == "00ff7448-0000-1000-8000-000000000000"
    assert lib.amdsmi_get_processor_type(mi0)["processor_type"].endswith("AMD_GPU")
    asic = lib.amdsmi_get_gpu_asic_info(mi0)
    assert asic["market_name"] == "AMD Instinct MI300X" and asic["vendor_id"] == "0x1002"
    assert asic["num_compute_units"] == 152 and asic["target_graphics_version"] == "gfx942"
    assert lib.amdsmi_get_gpu_asic_info(radeon)["oam_id"] == "N/A"
    assert lib.amdsmi_get_gpu_compute_partition(mi1) == "DPX"
    assert lib.amdsmi_get_gpu_memory_partition(mi0) == "NPS1"
    assert lib.amdsmi_get_gpu_xcd_counter(mi1) == 4
    assert lib.amdsmi_get_gpu_board_info(radeon)["product_serial"] == "N/A"
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_gpu_compute_partition(radeon)
    assert e.value.get_error_code() == 2
    with pytest.raises(lib.AmdSmiParameterException):
        lib.amdsmi_get_gpu_device_bdf(hs[0].value)  # a plain int is not a handle
    with pytest.raises(AttributeError):
        lib.amdsmi_get_gpu_fan_speed_not_there  # noqa: B018


def test_init_flag_shutdown_and_versions():
    sim = Simulation(load(None), ManualClock())
    lib = sim.amdsmi
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_processor_handles()
    assert e.value.get_error_code() == 32 and "32" in str(e.value)
    assert lib.amdsmi_get_rocm_version() == (True, "7.0.2")  # works without init
    with pytest.raises(lib.AmdSmiParameterException) as p:
        lib.amdsmi_init(2)  # the real binding refuses a plain int
    assert not isinstance(p.value, lib.AmdSmiLibraryException)
    lib.amdsmi_init(lib.AmdSmiInitFlags.INIT_AMD_GPUS)
    # the binding refused the int before calling the library
    assert sim.libamdsmi.calls["amdsmi_init"] == 1 and lib.__version__ == "7.0.2"
    assert lib.amdsmi_get_lib_version()["build"] == "0"
    h = handles(sim)[0]
    lib.amdsmi_shut_down()
    for call in (lambda: lib.amdsmi_get_gpu_device_bdf(h), lib.amdsmi_get_processor_handles):
        with pytest.raises(lib.AmdSmiLibraryException) as e:
            call()
        assert e.value.get_error_code() == 32
    sim.libamdsmi.library_missing = True
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_init()
    assert e.value.get_error_code() == 34
    sim.close()


def test_enums_have_the_real_values(sim):
    lib = sim.amdsmi
    assert lib.AmdSmiClkType.GFX is lib.AmdSmiClkType.SYS and lib.AmdSmiClkType.MEM == 4
    assert lib.AmdSmiMemoryType.GTT == 2 and lib.AmdSmiGpuBlock.XGMI_WAFL == 128
    ev = lib.AmdSmiEvtNotificationType
    assert ev.PAGE_FAULT_START is ev.PAGE_FAULT_END  # the 7.0.2 binding's bug


def test_thermal_and_units(sim):
    lib = sim.amdsmi
    mi0, mi1, radeon = handles(sim)
    T, M = lib.AmdSmiTemperatureType, lib.AmdSmiTemperatureMetric
    assert T.JUNCTION is T.HOTSPOT
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_temp_metric(mi0, T.EDGE, M.CURRENT)  # no edge sensor on MI300
    assert e.value.get_error_code() == 2
    hot = lib.amdsmi_get_temp_metric(mi0, T.HOTSPOT, M.CURRENT)
    assert hot > 30 and lib.amdsmi_get_temp_metric(mi1, T.HOTSPOT, M.CURRENT) == 0
    assert lib.amdsmi_get_temp_metric(radeon, T.EDGE, M.CURRENT) > 0
    with pytest.raises(lib.AmdSmiParameterException):
        lib.amdsmi_get_temp_metric(mi0, 1, M.CURRENT)
    # memory: bytes, but vram_usage in MB
    total = lib.amdsmi_get_gpu_memory_total(mi0, lib.AmdSmiMemoryType.VRAM)
    used = lib.amdsmi_get_gpu_memory_usage(mi0, lib.AmdSmiMemoryType.VRAM)
    assert total == 96 * GIB and 20 * GIB < used < total
    mb = lib.amdsmi_get_gpu_vram_usage(mi0)
    assert mb == {"vram_total": total // MIB, "vram_used": used // MIB}
    assert lib.amdsmi_get_gpu_memory_total(radeon, lib.AmdSmiMemoryType.VIS_VRAM) == 256 * MIB
    with pytest.raises(lib.AmdSmiParameterException):
        lib.amdsmi_get_gpu_memory_total(mi0, 0)
    # power caps in microwatts
    assert lib.amdsmi_get_power_cap_info(mi0)["power_cap"] == 750_000_000
    assert lib.amdsmi_get_power_info(mi0)["power_limit"] == 750
    # PCIe in MT/s, gpu_metrics in 0.1 GT/s
    pcie = lib.amdsmi_get_pcie_info(mi0)
    assert pcie["pcie_static"]["max_pcie_speed"] == 32000
    assert pcie["pcie_metric"]["pcie_speed"] == 32000
    rpcie = lib.amdsmi_get_pcie_info(radeon)
    assert rpcie["pcie_metric"]["pcie_width"] == 8
    assert rpcie["pcie_metric"]["pcie_replay_count"] == "N/A"
    metrics = lib.amdsmi_get_gpu_metrics_info(mi0)
    assert len(metrics) == 79  # the 7.0.2 binding's keys, list-valued ones among them
    assert len(metrics["temperature_hbm"]) == 4 and len(metrics["vcn_activity"]) == 4
    # seven links, so seven counters (KB); the eighth slot reads no value
    assert metrics["xgmi_read_data_acc"][:7] == [0] * 7
    assert metrics["xgmi_read_data_acc"][7] == "N/A"
    assert metrics["indep_throttle_status"] == "N/A"  # MI300: all ones
    assert metrics["pcie_link_speed"] == 320 and metrics["temperature_edge"] == "N/A"
    assert metrics["throttle_status"] is True  # flattened to a bool
    assert metrics["accumulation_counter"] == 90 * 60 * 1000
    assert lib.amdsmi_get_gpu_metrics_info(radeon)["pcie_link_speed"] == 160
    rows = metrics["xcp_stats.gfx_busy_inst"]
    assert len(rows) == 8 and all(len(r) == 8 for r in rows)
    assert all(isinstance(v, int) for v in rows[0][:4]) and rows[0][4:] == ["N/A"] * 4
    # energy: ticks * resolution = the world's joules
    energy = lib.amdsmi_get_energy_count(mi0)
    joules = sim.world.vendor_devices("amd")[0].totals(sim.world.now())["energy_j"]
    ticks_j = energy["energy_accumulator"] * energy["counter_resolution"] * 1e-6
    assert ticks_j == pytest.approx(joules, abs=1e-4)


def test_mi300_newer_metrics_links_fans_and_power_bounds(sim):
    lib = sim.amdsmi
    mi0, radeon = handles(sim)[0], handles(sim)[-1]
    metrics = lib.amdsmi_get_gpu_metrics_info(mi0)
    # pcie_bandwidth_acc: GB/s added per accumulation tick (ms): the world's bytes / 1e6
    tot = sim.world.vendor_devices("amd")[0].totals(sim.world.now())
    assert metrics["pcie_bandwidth_acc"] == int((tot["pcie_tx"] + tot["pcie_rx"]) / 1e6)
    assert isinstance(metrics["pcie_bandwidth_inst"], int)
    # host-limit accumulators per XCP and XCC, lists of lists as the binding builds them
    rows = metrics["xcp_stats.gfx_below_host_limit_total_acc"]
    assert len(rows) == 8 and all(len(r) == 8 for r in rows)
    assert all(isinstance(v, int) for v in rows[0][:4]) and rows[0][4:] == ["N/A"] * 4
    assert metrics["xgmi_link_width"] == 16 and metrics["xgmi_link_speed"] == 32
    assert metrics["xgmi_link_status"][:7] == [1] * 7
    assert lib.amdsmi_get_gpu_xgmi_link_status(mi0) == {"status": ["U"] * 7,
                                                         "total_links": 7}
    radeon_metrics = lib.amdsmi_get_gpu_metrics_info(radeon)
    assert radeon_metrics["pcie_bandwidth_acc"] == "N/A"
    assert radeon_metrics["xcp_stats.gfx_below_host_limit_ppt_acc"][0] == ["N/A"] * 8
    for call in (lib.amdsmi_get_gpu_fan_speed, lib.amdsmi_get_gpu_fan_speed_max):
        with pytest.raises(lib.AmdSmiLibraryException) as e:
            call(mi0, 0)  # passively cooled
        assert e.value.get_error_code() == 2
    cap = lib.amdsmi_get_power_cap_info(mi0)
    assert cap["min_power_cap"] <= cap["power_cap"] <= cap["max_power_cap"]
    assert cap["default_power_cap"] > 0


def test_radeon_sentinels(sim):
    lib = sim.amdsmi
    radeon = handles(sim)[2]
    power = lib.amdsmi_get_power_info(radeon)
    # the library's 16-bit "no value" (0xFFFF), which the binding turns into 'N/A'
    assert power["mem_voltage"] == "N/A" and power["current_socket_power"] == "N/A"
    assert isinstance(power["average_socket_power"], int)
    activity = lib.amdsmi_get_gpu_activity(radeon)
    assert activity["umc_activity"] == "N/A" and activity["mm_activity"] == "N/A"
    assert activity["gfx_activity"] == 80
    for call in (lib.amdsmi_get_gpu_pci_throughput, lib.amdsmi_get_violation_status,
                 lib.amdsmi_get_gpu_ecc_enabled):
        with pytest.raises(lib.AmdSmiLibraryException) as e:
            call(radeon)
        assert e.value.get_error_code() == 2


def test_processes_stale_pids_and_own_pid(sim):
    lib = sim.amdsmi
    clock = sim.world.clock
    mi0, mi1, radeon = handles(sim)
    own = [p for p in lib.amdsmi_get_gpu_process_list(mi0) if p["pid"] == os.getpid()]
    assert own and own[0]["mem"] == 0 and own[0]["name"] == "python3"
    # 7.0.2 lists every KFD process under every GPU, with zero usage where it holds none
    listed = lib.amdsmi_get_gpu_process_list(mi0)
    assert {p["pid"] for p in listed} == {46001, 46002, 46003, 47001, os.getpid()}
    assert {p["pid"] for p in listed if p["memory_usage"]["vram_mem"]} == {46001}
    blender = [p for p in lib.amdsmi_get_gpu_process_list(radeon) if p["mem"]]
    assert [p["pid"] for p in blender] == [47001] and blender[0]["cu_occupancy"] == "N/A"
    assert blender[0]["mem"] == sum(blender[0]["memory_usage"].values())

    def eval_batch():  # pid 46003 on partition 1 ends at 50m
        return [p for p in lib.amdsmi_get_gpu_process_list(mi1) if p["pid"] == 46003]

    clock.t = 52 * 60
    first = eval_batch()
    assert first and first[0]["mem"] > 6 * GIB  # exited, still listed
    clock.t = 58 * 60
    assert eval_batch() == first  # frozen at its exit
    clock.t = 80 * 60
    assert eval_batch() == first  # kept while any process is alive


def test_raw_throttle_bitmask():
    """A part whose SMU fills indep_throttle_status (CDNA2): the SMU_THROTTLER bits."""
    sim = Simulation(parse({"devices": [{
        "vendor": "amd", "model": "AMD Instinct MI250X", "architecture": "cdna2",
        "events": [{"at": "20m", "kind": "thermal_throttle", "duration": "1h"}]}]}, "s.yaml"),
        ManualClock(50 * 60))
    try:
        lib = sim.amdsmi
        lib.amdsmi_init()
        (mi0,) = handles(sim)
        s = lib.amdsmi_wrapper.amdsmi_gpu_metrics_t()
        assert lib.amdsmi_wrapper.amdsmi_get_gpu_metrics_info(mi0, ctypes.byref(s)) == 0
        assert s.indep_throttle_status & (1 << 33) and s.throttle_status
        sim.world.clock.t = 10 * 60  # before the throttle event
        assert lib.amdsmi_wrapper.amdsmi_get_gpu_metrics_info(mi0, ctypes.pointer(s)) == 0
        assert not s.indep_throttle_status & (1 << 33)
        assert s.accumulation_counter == 600_000
        lib.amdsmi_shut_down()
        assert lib.amdsmi_wrapper.amdsmi_get_gpu_metrics_info(mi0, ctypes.byref(s)) == 32
    finally:
        sim.close()


def test_mi300_never_fills_the_throttle_bitmask(sim):
    """As the real MI300: indep_throttle_status reads all ones, whether throttled or not."""
    lib = sim.amdsmi
    mi0 = handles(sim)[0]
    s = lib.amdsmi_wrapper.amdsmi_gpu_metrics_t()
    assert lib.amdsmi_wrapper.amdsmi_get_gpu_metrics_info(mi0, ctypes.byref(s)) == 0
    assert s.indep_throttle_status == 2**64 - 1 and s.throttle_status


def test_faults_and_hangs(sim):
    lib, c = sim.amdsmi, sim.libamdsmi
    mi0, mi1, radeon = handles(sim)
    c.faults.add("amdsmi_get_power_info", device=0, error=2)
    c.faults.add("amdsmi_get_gpu_activity", device=1, error=9)
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_power_info(mi1)  # a partition counts as its physical device
    assert e.value.get_error_code() == 2
    with pytest.raises(lib.AmdSmiRetryException) as r:
        lib.amdsmi_get_gpu_activity(radeon)
    assert isinstance(r.value, lib.AmdSmiLibraryException) and r.value.get_error_code() == 9
    assert c.calls_by_device[("amdsmi_get_power_info", 0)] == 1
    gate = threading.Event()
    c.violation_latency = 0
    c.faults.add("amdsmi_get_violation_status", hang=gate)
    out = []
    worker = threading.Thread(target=lambda: out.append(lib.amdsmi_get_violation_status(mi0)))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive() and not out
    gate.set()
    worker.join(2)
    assert out[0]["active_socket_thrm"] is True and out[0]["per_socket_thrm"] == 100
    # the real struct's per-XCP arrays, all ones on MI300 (gpu_metrics 1.6 has none)
    assert out[0]["acc_gfx_clk_below_host_limit_pwr"] == [["N/A"] * 8] * 8
    assert out[0]["active_low_utilization"] == [["N/A"] * 8] * 8
    assert out[0]["per_gfx_clk_below_host_limit"] == "N/A"


def no_event(lib, reader) -> None:
    """As the real binding: a read that saw no event raises NO_DATA (40), not []."""
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        reader.read(0)
    assert e.value.get_error_code() == 40


def test_events_delivered_once(sim):
    lib = sim.amdsmi
    clock = sim.world.clock
    clock.t = 50 * 60
    mi0, _, radeon = handles(sim)
    ev = lib.AmdSmiEvtNotificationType
    with lib.AmdSmiEventReader(mi0, [ev.THERMAL_THROTTLE, ev.GPU_PRE_RESET]) as reader:
        no_event(lib, reader)
        clock.t = 61 * 60
        got = reader.read(10)
        assert [e["event"] for e in got] == ["THERMAL_THROTTLE"]
        assert got[0]["processor_handle"].value == mi0.value and ":" in got[0]["message"]
        no_event(lib, reader)
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.AmdSmiEventReader(radeon, [ev.THERMAL_THROTTLE])
    assert e.value.get_error_code() == 2


def test_lost_device_and_stale_handles():
    scenario = parse({"devices": [{"vendor": "amd", "architecture": "cdna3", "events": [
        {"at": "10m", "kind": "fall_off_bus", "duration": "5m"}]}]}, "s.yaml")
    sim = Simulation(scenario, ManualClock(60))
    lib = sim.amdsmi
    lib.amdsmi_init()
    (h,) = lib.amdsmi_get_processor_handles()
    reader = lib.AmdSmiEventReader(h, [lib.AmdSmiEvtNotificationType.GPU_PRE_RESET,
                                       lib.AmdSmiEvtNotificationType.GPU_POST_RESET])
    sim.world.clock.t = 12 * 60
    assert lib.amdsmi_get_processor_handles() == []
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_gpu_device_bdf(h)
    assert e.value.get_error_code() == 31
    sim.world.clock.t = 20 * 60
    (again,) = lib.amdsmi_get_processor_handles()
    assert again.value != h.value and lib.amdsmi_get_gpu_device_bdf(again)
    with pytest.raises(lib.AmdSmiLibraryException) as e:
        lib.amdsmi_get_gpu_device_bdf(h)  # from before the device came back
    assert e.value.get_error_code() == 31
    events = [e["event"] for e in reader.read(0)]
    assert events == ["GPU_PRE_RESET", "GPU_POST_RESET"]
    sim.close()


def test_exited_processes_listed_until_none_is_left():
    """7.0.2 keeps an exited process in the list while any other is still alive, and
    forgets them all once the list has run empty."""
    sim = Simulation(parse({"duration": "3h", "devices": [
        {"vendor": "amd", "architecture": "cdna3", "processes": [
            {"pid": 501, "name": "short", "end": "10m",
             "memory": {"pattern": "constant", "size": "4GiB"}},
            {"pid": 502, "name": "long", "end": "1h",
             "memory": {"pattern": "constant", "size": "8GiB"}}]},
        {"vendor": "amd", "model": "AMD Radeon PRO W7900", "architecture": "rdna3"}]},
        "s.yaml"), ManualClock(5 * 60))
    try:
        lib = sim.amdsmi
        lib.amdsmi_init()
        mi, radeon = handles(sim)

        def pids(h):
            return {p["pid"] for p in lib.amdsmi_get_gpu_process_list(h)} - {os.getpid()}

        assert pids(mi) == pids(radeon) == {501, 502}  # listed under every GPU
        sim.world.clock.t = 50 * 60
        assert pids(mi) == {501, 502}  # 501 exited at 10m, still listed
        stale = [p for p in lib.amdsmi_get_gpu_process_list(mi) if p["pid"] == 501]
        assert stale[0]["memory_usage"]["vram_mem"] == 4 * GIB
        sim.world.clock.t = 70 * 60
        assert pids(mi) == set()
    finally:
        sim.close()
