"""The AMD backend against the simulated amdsmi: units, sentinels, partitions, processes,
throttling, and a mixed NVIDIA + AMD scrape under one set of names."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuprobe.daemon.export.catalog import CATALOG
from gpuprobe.probes.amd import library as L
from gpuprobe.probes.amd.processes import list_processes
from gpuprobe.probes.amd.telemetry import decode_throttle
from gpuprobe.probes.sim import ManualClock

from .conftest import make_daemon

GIB = 2**30

AMD_SCENARIO = {
    "name": "mixed",
    "seed": 3,
    "devices": [
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "architecture": "hopper",
         "memory": "80GiB", "pcie": {"replays_per_minute": 2},
         "processes": [{"pid": 1001, "name": "trainer", "utilization": 0.5,
                        "memory": {"pattern": "constant", "size": "1GiB"}}]},
        {"vendor": "amd", "model": "AMD Instinct MI300X", "architecture": "cdna3",
         "memory": "192GiB", "partition": "DPX",
         "instances": [{"profile": "DPX", "memory": "96GiB"},
                       {"profile": "DPX", "memory": "96GiB"}],
         "pcie": {"replays_per_minute": 2},
         "processes": [
             {"pid": 2001, "name": "llm_train", "instance": 0, "utilization": 0.6,
              "memory": {"pattern": "constant", "size": "20GiB"}},
             {"pid": 2002, "name": "rag", "instance": 1, "utilization": 0.4,
              "memory": {"pattern": "constant", "size": "8GiB"}},
             {"pid": 2003, "name": "short_job", "instance": 1, "start": "1m", "end": "3m",
              "utilization": 0.1, "memory": {"pattern": "constant", "size": "2GiB"}}],
         "events": [{"at": "20m", "kind": "thermal_throttle", "duration": "1h"},
                    {"at": "5m", "kind": "ecc", "corrected": 3}]},
        {"vendor": "amd", "model": "AMD Radeon PRO W7900", "architecture": "rdna3",
         "memory": "48GiB", "ecc": False, "fans": 1,
         "pcie": {"max_generation": 4, "generation": 4, "width": 8, "idle_downtrain": False},
         "unsupported": ["violation_status", "pcie_counters", "pcie_throughput",
                         "xid_events", "remapped_rows"],
         "processes": [{"pid": 3001, "name": "blender", "utilization": 0.8,
                        "memory": {"pattern": "constant", "size": "14GiB"}}]},
    ],
}

AMD_FAST = {
    "amd": {"retry_initial": "10ms", "retry_max": "50ms", "discovery_interval": "1h",
            "ras_interval": "1s"},
    "collectors": {"nvidia": {"interval": "1s", "timeout": "500ms"},
                   "nvidia_processes": {"interval": "1s", "timeout": "500ms"},
                   "nvidia_events": {"interval": "1s", "timeout": "200ms"},
                   "amd": {"interval": "1s", "timeout": "500ms"},
                   "amd_processes": {"interval": "1s", "timeout": "500ms"},
                   "amd_events": {"interval": "1s", "timeout": "200ms"},
                   "amd_slow": {"interval": "1s", "timeout": "500ms"},
                   "pcie_probe": {"enabled": False}, "launch_probe": {"enabled": False}},
}


def amd_daemon(start: float = 60.0):
    d = make_daemon(AMD_SCENARIO, AMD_FAST, ManualClock(start=start))
    face = d.simulation.libamdsmi
    face.violation_latency = face.throughput_latency = 0.01
    return d


def cycle(d, advance: float = 5.0) -> None:
    d.scheduler.run_once()
    time.sleep(0.05)
    d.simulation.world.clock.advance(advance)


def devices(d, vendor: str = "amd") -> dict[str, object]:
    return {s.identity.index: s for s in d.store.view().devices()
            if s.identity.vendor == vendor}


@pytest.fixture
def daemon():
    d = amd_daemon()
    yield d
    d.stop()


# -- units and sentinels, checked against hand-computed values ---------------------------

def test_unit_conversions() -> None:
    assert L.generation_from_mts(16000) == 4 and L.generation_from_mts(32000) == 5
    assert L.generation_from_mts(2500) == 1 and L.generation_from_mts("N/A") is None
    assert L.generation_from_tenths_gts(320) == 5 and L.generation_from_tenths_gts(80) == 3
    assert L.microwatts_to_watts(750_000_000) == 750.0
    assert L.mhz_to_hertz(2100) == 2.1e9 and L.mhz_to_hertz(0) is None
    # 1e6 ticks of 15.259 µJ = 15.259 J
    assert L.energy_joules({"energy_accumulator": 1_000_000,
                            "counter_resolution": 15.259}) == pytest.approx(15.259)
    assert L.energy_joules({"energy_accumulator": 2**64 - 1, "counter_resolution": 15.3}) is None
    assert L.percent_ratio(37) == 0.37 and L.percent_ratio(100) == 1.0


def test_sentinels_are_absent_never_zero() -> None:
    for v in ("N/A", "n/a", "", None, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        assert L.clean(v) is None
        assert L.number(v) is None
    assert L.clean(0xFFFF, bits=32) == 0xFFFF  # a valid 32-bit count
    assert L.clean(0) == 0 and L.number(0) == 0.0  # a real zero stays
    assert L.percent_ratio(0xFFFF) is None and L.percent_ratio(101) is None
    assert L.percent_ratio(-1) is None
    assert L.text("N/A") is None and L.text(" MI300X ") == "MI300X"


def test_throttle_bits_decode_to_shared_reasons() -> None:
    assert decode_throttle(0) == frozenset()
    assert decode_throttle(1 << 0) == {"power_cap"}  # PPT0
    assert decode_throttle(1 << 6) == {"power_cap"}  # SPPT
    assert decode_throttle(1 << 16) == {"current_limit"}  # TDC_GFX
    assert decode_throttle(1 << 33) == {"sw_thermal"}  # TEMP_CORE
    assert decode_throttle(1 << 34) == {"memory_thermal"}  # TEMP_MEM
    assert decode_throttle(1 << 36) == {"sw_thermal"}  # TEMP_HOTSPOT
    assert decode_throttle(1 << 47 | 1) == {"hw_slowdown", "power_cap"}  # PROCHOT_GFX, PPT0
    assert decode_throttle(1 << 56) == frozenset()  # PPM: no shared meaning


# -- the backend on the simulated library ----------------------------------------------------

def test_identity_partitions_and_units(daemon) -> None:
    cycle(daemon)
    energy_first = devices(daemon)["0"].power.energy_joules
    cycle(daemon, advance=0.0)
    amd = devices(daemon)
    assert set(amd) == {"0", "0/0", "0/1", "1"}
    world = {d.spec.model: d for d in daemon.simulation.world.devices}
    mi300, radeon = amd["0"], amd["1"]
    w = world["AMD Instinct MI300X"]
    s = w.state(daemon.simulation.world.now())
    assert mi300.identity.model == "AMD Instinct MI300X"
    assert (mi300.identity.architecture, mi300.identity.compute_capability) == ("cdna3", "gfx942")
    assert (mi300.identity.partition, mi300.identity.memory_partition) == ("DPX", "NPS1")
    assert amd["0/1"].identity.parent_uuid == mi300.identity.uuid
    assert amd["0/1"].identity.pci_bus_id.endswith(".1")  # the partition in the function
    # MI300 has no edge sensor; hotspot and memory come from partition 0 (never the zeros
    # that other partitions report)
    assert set(mi300.thermal.temperatures) == {"hotspot", "memory"}
    assert mi300.thermal.temperatures["hotspot"] == round(s.temperature + 8)
    assert mi300.thermal.thresholds[("hotspot", "slowdown")] == w.spec.slowdown_celsius + 8
    assert mi300.thermal.thresholds[("hotspot", "shutdown")] == w.spec.shutdown_celsius + 8
    assert mi300.power.draw_watts == round(s.power_watts)
    assert mi300.power.limit_watts == w.spec.limit_watts  # from microwatts
    # 5 s at a constant draw between the two polls; ticks of 15.259 µJ
    assert mi300.power.energy_joules - energy_first == pytest.approx(5 * s.power_watts,
                                                                     abs=1e-4)
    # memory in bytes per partition, the GPU's the sum
    assert amd["0/0"].memory.total_bytes == 96 * GIB
    assert amd["0/0"].memory.used_bytes == 20 * GIB
    assert mi300.memory.total_bytes == 192 * GIB
    assert mi300.memory.used_bytes == 30 * GIB  # 20 + 8 + the 2 of short_job
    assert mi300.memory.gtt_total_bytes and mi300.memory.bar1_total_bytes
    # PCIe from MT/s
    assert (mi300.pcie.generation, mi300.pcie.width) == (5, 16)
    assert mi300.pcie.replays_total == w.replays(daemon.simulation.world.now())
    # activity: per XCC on MI300, 4 XCCs per DPX partition, the GPU's the mean
    assert set(amd["0/0"].xcc_utilization) == {"0", "1", "2", "3"}
    assert amd["0/0"].utilization["gpu"] == pytest.approx(0.6, abs=0.03)
    assert mi300.utilization["gpu"] == pytest.approx((0.6 + 0.5) / 2, abs=0.03)
    assert mi300.clocks.current["graphics"] == pytest.approx(s.sm_hz, rel=1e-3)
    # Radeon: no unique id, so the address is the key; N/A and raw UINT32_MAX are absent
    assert radeon.identity.uuid == "AMD-0000:88:00.0" or radeon.identity.uuid.startswith("AMD-")
    assert radeon.up and radeon.pcie.generation == 4 and radeon.pcie.width == 8
    assert (radeon.pcie.max_generation, radeon.pcie.max_width) == (4, 16)
    assert "edge" in radeon.thermal.temperatures
    assert radeon.utilization == {"gpu": pytest.approx(0.8)}  # umc N/A, mm 0xFFFFFFFF
    assert radeon.pcie.replays_total is None and radeon.errors.ecc_enabled is None
    assert radeon.power.draw_watts is not None  # average_socket_power on Radeon


def test_ecc_by_block_and_slow_throughput(daemon) -> None:
    daemon.simulation.world.clock.advance(10 * 60)  # past the ECC event
    for _ in range(3):
        cycle(daemon, advance=1.0)
    mi300 = devices(daemon)["0"]
    assert mi300.errors.ecc_enabled is True
    assert mi300.errors.ecc_corrected_total == 3
    assert mi300.errors.ecc_blocks[("umc", "corrected")] == 3
    assert mi300.errors.ecc_blocks[("gfx", "corrected")] == 0
    assert mi300.errors.retired_pages == {"uncorrectable": 0}
    # the slow collector's one-second sample, merged into telemetry, and MI300's own byte
    # counter (pcie_bandwidth_acc) beside it
    assert set(mi300.pcie.sampled_bytes_per_second) == {"tx", "rx"}
    assert mi300.pcie.sampled_bytes_per_second["rx"] > 0
    assert mi300.pcie.transferred_bytes_total > 0
    assert devices(daemon)["1"].pcie.sampled_bytes_per_second == {}  # Radeon: unsupported
    assert devices(daemon)["1"].pcie.transferred_bytes_total is None


MI250X = {"vendor": "amd", "model": "AMD Instinct MI250X", "architecture": "cdna2",
          "memory": "64GiB", "events": [{"at": "20m", "kind": "thermal_throttle",
                                          "duration": "1h"}]}


def test_throttle_reasons_from_the_raw_bitmask_and_time() -> None:
    """Where the SMU fills indep_throttle_status (here a CDNA2 part), its bits give the
    reasons; the residency accumulators the time."""
    d = make_daemon({"seed": 4, "devices": [MI250X]}, AMD_FAST, ManualClock(60.0))
    try:
        cycle(d)
        assert devices(d)["0"].throttle.active == frozenset()
        d.simulation.world.clock.t = 25 * 60.0  # inside the thermal event
        cycle(d, advance=600.0)
        before = devices(d)["0"].throttle.seconds_total
        cycle(d, advance=1.0)
        t = devices(d)["0"].throttle
        assert t.active == {"sw_thermal", "hw_slowdown"}  # TEMP_CORE/HOTSPOT, PROCHOT_GFX
        assert "power_cap" in t.supported and "current_limit" in t.supported
        # the residency accumulators: ten minutes throttled between the two polls
        assert t.seconds_total["sw_thermal"] - before["sw_thermal"] == pytest.approx(600.0,
                                                                                      abs=1)
        assert t.seconds_total["power_cap"] == pytest.approx(0.0, abs=0.5)
    finally:
        d.stop()


def test_mi300_throttle_reasons_come_from_the_residency_counters(daemon) -> None:
    """Issue 13, defect 5: MI300 never fills indep_throttle_status (all ones), so its
    reasons come from which residency accumulators grew, the path real MI300s take."""
    cycle(daemon)
    daemon.simulation.world.clock.t = 25 * 60.0  # inside the thermal event
    cycle(daemon, advance=600.0)
    before = devices(daemon)["0"].throttle.seconds_total
    cycle(daemon, advance=1.0)
    t = devices(daemon)["0"].throttle
    assert t.supported == {"power_cap", "sw_thermal", "memory_thermal", "hw_slowdown"}
    assert t.active == {"sw_thermal", "hw_slowdown"}
    # cycle() moves the clock after its poll: ten minutes between the two polls
    assert t.seconds_total["sw_thermal"] - before["sw_thermal"] == pytest.approx(600.0, abs=1)


def test_throttle_without_the_raw_bitmask_uses_residency() -> None:
    d = amd_daemon(start=25 * 60.0)
    try:
        d.simulation.amdsmi.amdsmi_wrapper = None  # a binding without the ctypes layer
        cycle(d, advance=60.0)
        cycle(d, advance=60.0)
        t = devices(d)["0"].throttle
        assert t.supported == {"power_cap", "sw_thermal", "memory_thermal", "hw_slowdown"}
        assert t.active == {"sw_thermal", "hw_slowdown"}
    finally:
        d.stop()


def test_processes_stale_own_pid_and_busy_ratio(daemon) -> None:
    daemon.simulation.world.clock.t = 8 * 60.0  # short_job ended at 3m; amdsmi still lists it
    cycle(daemon, advance=10.0)
    cycle(daemon, advance=10.0)
    face = daemon.simulation.amdsmi
    listed = {p["pid"] for h in face.amdsmi_get_processor_handles()
              for p in face.amdsmi_get_gpu_process_list(h)}
    assert {2003, os.getpid()} <= listed  # the library's traps are there
    procs = {p.pid: p for r in daemon.store.view().results.values() for p in r.processes}
    assert 2003 not in procs and os.getpid() not in procs
    assert procs[2001].used_memory_bytes == 20 * GIB and procs[2001].name == "llm_train"
    assert procs[2001].busy_ratio == pytest.approx(0.6, rel=0.02)
    assert procs[3001].busy_ratio == pytest.approx(0.8, rel=0.02)
    uuids = {s.identity.index: s.identity.uuid for s in daemon.store.view().devices()
             if s.identity.vendor == "amd"}
    assert procs[2001].device_uuid == uuids["0/0"] and procs[2002].device_uuid == uuids["0/1"]


def test_events_counted_from_zero(daemon) -> None:
    cycle(daemon)
    time.sleep(0.3)
    cycle(daemon)
    events = {u: c for r in daemon.store.view().results.values()
              for u, c in r.event_counts.items()}
    mi300 = devices(daemon)["0"].identity.uuid
    assert events[mi300] == {"thermal_throttle": 0, "reset": 0}
    daemon.simulation.world.clock.t = 20 * 60.0 + 1  # the throttle event begins
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cycle(daemon, advance=0.0)
        events = {u: c for r in daemon.store.view().results.values()
                  for u, c in r.event_counts.items()}
        if events[mi300]["thermal_throttle"] == 1:
            break
        time.sleep(0.1)
    assert events[mi300]["thermal_throttle"] == 1


# -- one set of names for both vendors -------------------------------------------------------

# Shared families (both catalogue columns name a source) whose source this scenario does
# not exercise on one vendor, and why.
NOT_IN_THIS_SCENARIO = {
    "gpuprobe_retired_pages_pending": "NVIDIA: pre-Ampere only",
    "gpuprobe_retired_pages_total": "NVIDIA: pre-Ampere only",
    "gpuprobe_fan_speed_ratio": "data-centre boards have no fans (tests/test_hardware_*.py)",
}


def _vendors(d) -> dict[str, set[str]]:
    vendors: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(generate_latest(d.registry).decode()):
        for s in fam.samples:
            if "vendor" in s.labels:
                vendors.setdefault(s.name, set()).add(s.labels["vendor"])
    return vendors


def test_mixed_scrape_every_shared_family_carries_both_vendors(daemon) -> None:
    for _ in range(10):  # until the leak detector has two listings of every process
        cycle(daemon)
        vendors = _vendors(daemon)
        if vendors.get("gpuprobe_process_memory_leak_suspected") == {"nvidia", "amd"}:
            break
    shared = [m for m in CATALOG if m.scope in ("device", "link", "process", "leak",
                                                "process_leak")
              and not m.nvidia.startswith("absent") and not m.amd.startswith("absent")
              and m.name not in NOT_IN_THIS_SCENARIO]
    assert len(shared) >= 40
    missing = {m.name: sorted(vendors.get(m.name, set())) for m in shared
               if vendors.get(m.name, set()) != {"nvidia", "amd"}}
    # leak series beyond the flag appear only while memory grows; none grows here
    missing = {n: v for n, v in missing.items()
               if not any(w in n for w in ("growth_duration", "confidence", "exhaustion",
                                           "process_memory_growth"))}
    assert not missing, missing
    # families one vendor lacks carry only the other, never a fake 0 from the absent one
    for m in CATALOG:
        if m.amd.startswith("absent") and m.name in vendors:
            assert vendors[m.name] == {"nvidia"}, m.name
        if m.nvidia.startswith("absent") and m.name in vendors:
            assert vendors[m.name] == {"amd"}, m.name


def test_an_idle_event_reader_is_not_an_error(daemon) -> None:
    """Issue 13, defect 2: the real AmdSmiEventReader.read raises NO_DATA (40) whenever no
    event came in its wait; that was counted as a transient error about once a second per
    GPU. It means "nothing happened", as the NVIDIA watcher's timeout does."""
    cycle(daemon)
    time.sleep(3.0)  # three one-second reads on each GPU, none with an event
    cycle(daemon)
    health = daemon.store.view().health["amd_events"]
    assert health.up and health.errors_total.get("transient", 0) == 0
    # the reads did reach the library, whose NO_DATA the binding's _check_res raised
    assert daemon.simulation.libamdsmi.calls["amdsmi_get_gpu_event_notification"] >= 3


RADEON = {"vendor": "amd", "model": "AMD Radeon PRO W7900", "architecture": "rdna3",
          "memory": "48GiB", "ecc": False}


def test_two_identical_serial_less_radeons_stay_two_gpus() -> None:
    """Issue 13, defect 3: the real library gives a card without a serial number the UUID
    uuid_gen(0, device_id, 0xff), 00ff7448-0000-1000-8000-000000000000 on every W7900; two
    such cards were one GPU. The PCI address is the identity of last resort."""
    d = make_daemon({"seed": 5, "devices": [RADEON, RADEON]}, AMD_FAST, ManualClock(60.0))
    try:
        cycle(d)
        cycle(d)
        gpus = [s for s in d.store.view().devices() if s.identity.vendor == "amd"]
        assert len(gpus) == 2 and all(s.up for s in gpus)
        assert len({s.identity.uuid for s in gpus}) == 2
        assert all(s.identity.uuid.startswith("AMD-") for s in gpus)
    finally:
        d.stop()


@pytest.mark.parametrize(("uuid", "unique"), [
    ("00ff7448-0000-1000-8000-000000000000", False),  # serial-less W7900
    ("00000000-0000-1000-8000-000000000000", False),
    ("ffffffff-ffff-ffff-ffff-ffffffffffff", False),
    ("03bc4b7b-1c87-c1e8-6a6c-79fc752be1a0", True),
    ("31ff74a1-2b4c-1000-8000-5a3e9b1c2d40", True),
])
def test_unique_uuid(uuid: str, unique: bool) -> None:
    from gpuprobe.probes.amd.session import unique_uuid

    assert unique_uuid(uuid) is unique


def test_partitions_sharing_the_gpus_uuid_stay_apart(daemon) -> None:
    """The real library answers the GPU's UUID for every partition of an MI300."""
    cycle(daemon)
    parts = [s.identity for s in daemon.store.view().devices()
             if s.identity.vendor == "amd" and s.identity.parent_uuid]
    assert len(parts) == 2 and len({p.uuid for p in parts}) == 2
    assert {p.uuid for p in parts} == {f"{parts[0].parent_uuid}:0", f"{parts[0].parent_uuid}:1"}


def test_a_process_counts_only_on_the_gpu_it_uses() -> None:
    """amdsmi 7.0.2 lists every KFD process under every GPU's handle, with zero usage on
    the GPUs it does not use: such an entry is another GPU's process, not one here."""
    def entry(pid, vram, gfx):
        return {"name": "x", "pid": pid, "mem": vram, "cu_occupancy": "N/A",
                "engine_usage": {"gfx": gfx, "enc": 0},
                "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": vram}}

    class Lib:
        @staticmethod
        def amdsmi_get_gpu_process_list(handle):
            return [entry(1, 4 * GIB, 10**9), entry(2, 0, 0), entry(3, 0, 5 * 10**8)]

    class Session:
        lib = Lib()

    class Dev:
        handle = object()

    listed = list_processes(Session(), Dev(), lambda dev, what, fn, *a: fn(*a))
    assert listed == {1: (4 * GIB, 1e9), 3: (0, 5e8)}  # 3 ran here without memory


def _mi300(partition_memory: str, memory_partition: str = "NPS1", used: str = "30GiB"):
    return {"vendor": "amd", "model": "AMD Instinct MI300X", "architecture": "cdna3",
            "memory": "192GiB", "reserved": "1GiB", "partition": "QPX",
            "memory_partition": memory_partition, "partition_memory": partition_memory,
            "instances": [{"profile": "QPX", "memory": "48GiB"} for _ in range(4)],
            "processes": [{"pid": 4001, "name": "llm", "instance": 0, "utilization": 0.5,
                           "memory": {"pattern": "constant", "size": used}}]}


@pytest.mark.parametrize(("reporting", "mode", "total", "used"), [
    # every partition shows the whole pool (ROCm/ROCm#4750): the pool once, not 4x
    ("pool", "NPS1", 192 * GIB, 31 * GIB),
    # each partition its own share (amdsmi#97; NPS4 splits memory): the sum
    ("split", "NPS1", 192 * GIB, 30 * GIB),
    ("split", "NPS4", 192 * GIB, 30 * GIB),
])
def test_partition_memory_never_counts_the_pool_twice(reporting, mode, total, used) -> None:
    """Issue 13, defect 4: the backend summed partitions, so a GPU whose partitions each
    report the whole pool read 4 x 192 GiB."""
    d = make_daemon({"seed": 7, "devices": [_mi300(reporting, mode)]}, AMD_FAST,
                    ManualClock(60.0))
    try:
        cycle(d)
        cycle(d)
        amd = devices(d)
        assert {"0", "0/0", "0/1", "0/2", "0/3"} <= set(amd)
        gpu = amd["0"]
        assert gpu.identity.memory_partition == mode
        assert (gpu.memory.total_bytes, gpu.memory.used_bytes) == (total, used)
        assert gpu.memory.free_bytes == total - used
        exported = {s.labels["gpu"]: s.value
                    for fam in text_string_to_metric_families(generate_latest(d.registry).decode())
                    for s in fam.samples if s.name == "gpuprobe_memory_total_bytes"}
        assert exported["0"] == total
    finally:
        d.stop()


def test_pooled_rule() -> None:
    from gpuprobe.daemon.core.model import DeviceIdentity, DeviceSample, Memory
    from gpuprobe.probes.amd.telemetry import pooled

    def kids(*pairs):
        return [DeviceSample(identity=DeviceIdentity(str(i), "amd", f"0/{i}"), up=True,
                             memory=Memory(total_bytes=t, used_bytes=u))
                for i, (t, u) in enumerate(pairs)]
    own = Memory(gtt_total_bytes=5)
    pool = kids((100, 40), (100, 40.5), (100, 40))
    assert pooled(own, pool, "NPS1").total_bytes == 100  # the pool repeated: once
    assert pooled(own, pool, "NPS1").used_bytes == 40.5
    assert pooled(own, pool, None).total_bytes == 100  # mode unknown: as NPS1
    assert pooled(own, pool, "NPS4").total_bytes == 300  # a memory split: each its own
    assert pooled(own, kids((50, 10), (50, 30)), "NPS1").total_bytes == 100  # even shares
    assert pooled(own, kids((60, 10), (40, 10)), "NPS1").total_bytes == 100
    assert pooled(own, kids((50, None), (50, 3)), "NPS1").used_bytes is None
    assert pooled(own, pool, "NPS1").gtt_total_bytes == 5
