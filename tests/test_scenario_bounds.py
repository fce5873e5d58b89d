"""Scenario files: every malformed one is a one-line ScenarioError naming the file and the key;
values that would pin a CPU or fill memory are refused."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from gpuprobe.probes.sim import Simulation
from gpuprobe.probes.sim import scenario as scenario_mod
from gpuprobe.probes.sim.scenario import ScenarioError, load, parse

from .conftest import write_yaml
from .test_safeyaml import BILLION_LAUGHS

BASE: dict[str, Any] = {
    "time_acceleration": 1, "duration": "1h", "seed": 3,
    "devices": [{
        "vendor": "nvidia", "memory": "80GiB", "reserved": "512MiB",
        "pcie": {"max_generation": 5, "max_width": 16, "generation": 4, "width": 8,
                 "replays_per_minute": 1},
        "power": {"idle": 70, "max": 700, "limit": 700},
        "thermal": {"idle": 32, "busy": 68, "slowdown": 87, "shutdown": 92,
                    "max_operating": 85, "memory_offset": 6},
        "clocks": {"sm_max": "1980MHz", "sm_idle": "345MHz", "memory": "2619MHz"},
        "instances": [{"profile": "3g.40gb", "memory": "40GiB"}],
        "processes": [
            {"pid": 100, "start": "1m", "end": "50m", "utilization": 0.5, "instance": 0,
             "memory": {"pattern": "leak", "base": "1GiB", "rate": "1MiB/min",
                        "noise": "1MiB", "free_at": "40m"}},
            {"pid": 101, "memory": {"pattern": "staircase", "base": 0, "step": "64MiB",
                                    "every": "5m"}},
            {"pid": 102, "memory": {"pattern": "replay", "points": [[0, 0], ["1m", "1GiB"]]}},
        ],
        "events": [{"at": "2m", "kind": "xid", "code": 31, "count": 3, "spacing": "10s"},
                   {"at": "3m", "kind": "ecc", "corrected": 2, "uncorrected": 1},
                   {"at": "4m", "kind": "thermal_throttle", "duration": "1m"}],
    }],
}

NUMERIC = [
    "time_acceleration", "duration", "seed",
    "devices.0.memory", "devices.0.reserved",
    "devices.0.pcie.max_generation", "devices.0.pcie.max_width", "devices.0.pcie.generation",
    "devices.0.pcie.width", "devices.0.pcie.replays_per_minute",
    "devices.0.power.idle", "devices.0.power.max", "devices.0.power.limit",
    "devices.0.thermal.idle", "devices.0.thermal.busy", "devices.0.thermal.slowdown",
    "devices.0.thermal.shutdown", "devices.0.thermal.max_operating",
    "devices.0.thermal.memory_offset",
    "devices.0.clocks.sm_max", "devices.0.clocks.sm_idle", "devices.0.clocks.memory",
    "devices.0.instances.0.memory",
    "devices.0.processes.0.pid", "devices.0.processes.0.start", "devices.0.processes.0.end",
    "devices.0.processes.0.utilization", "devices.0.processes.0.instance",
    "devices.0.processes.0.memory.base", "devices.0.processes.0.memory.rate",
    "devices.0.processes.0.memory.noise", "devices.0.processes.0.memory.free_at",
    "devices.0.processes.1.memory.step", "devices.0.processes.1.memory.every",
    "devices.0.processes.2.memory.points.1.0", "devices.0.processes.2.memory.points.1.1",
    "devices.0.events.0.at", "devices.0.events.0.code", "devices.0.events.0.count",
    "devices.0.events.0.spacing", "devices.0.events.1.corrected",
    "devices.0.events.1.uncorrected", "devices.0.events.2.duration",
]


def with_value(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    here: Any = data
    parts = path.split(".")
    for p in parts[:-1]:
        here = here[int(p)] if isinstance(here, list) else here[p]
    last = parts[-1]
    if isinstance(here, list):
        here[int(last)] = value
    else:
        here[last] = value
    return data


def dotted(path: str) -> str:
    """devices.0.pcie.width -> devices[0].pcie.width, as the errors name keys."""
    out = ""
    for p in path.split("."):
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def refused(data: Any, *fragments: str) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(data, "s.yaml")
    msg = str(e.value)
    assert msg.startswith("s.yaml: ") and "\n" not in msg and len(msg) <= 200, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_the_base_scenario_is_valid():
    s = parse(BASE, "s.yaml")
    assert s.devices[0].processes[2].memory.points == ((0.0, 0.0), (60.0, 2**30))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**400, "nan", [1], {}],
                         ids=["nan", "inf", "-inf", "huge", "string", "list", "mapping"])
@pytest.mark.parametrize("path", NUMERIC)
def test_every_number_is_checked(path, bad):
    key = dotted(path)
    if path.endswith("points.1.0") or path.endswith("points.1.1"):
        key = "devices[0].processes[2].memory.points[1]"
    refused(with_value(path, bad), f"s.yaml: {key}: ")


@pytest.mark.parametrize("path, value, fragment", [
    ("devices.0.clocks.sm_max", "abcMHz", "expected a clock such as 1980MHz, got 'abcMHz'"),
    ("devices.0.clocks.sm_max", "nanMHz", "expected a clock such as 1980MHz"),
    ("devices.0.clocks.memory", "99999999MHz", "expected a clock"),
    ("devices.0.clocks.memory", 1e12, "must be between 0 and 10000000000"),
    ("devices.0.pcie.max_generation", 4.5, "expected an integer, got 4.5"),
    ("devices.0.events.0.count", 100_000_000, "must be between 1 and 10000"),
    ("devices.0.events.0.spacing", "1ms", "repeats must be at least 1s apart, got 0.001s"),
    ("devices.0.events.0.at", "400d", "expected a duration"),
    ("devices.0.events.0.at", 10**9, "must be between 0 and 31536000"),
    ("devices.0.events.0.kind", ["xid"], "must be one of xid"),
    ("devices.0.processes.0.pid", 2**40, "must be between 2 and 4194304"),
    ("devices.0.processes.0.name", "x" * 1000, "expected a string of at most 256"),
    ("devices.0.processes.0.memory.rate", "2TiB/s", "must be between"),
    ("devices.0.processes.0.memory", "leak", "expected a mapping, got 'leak'"),
    ("devices.0.processes.0.memory.pattern", ["leak"], "must be one of constant"),
    ("devices.0.processes.2.memory.points", [[0, 0], ["a", "b"]], "points[1]: expected"),
    ("devices.0.processes.2.memory.points", [[0, 0], [1, {}]], "points[1]: expected a size"),
    ("devices.0.processes.2.memory.points", [[0, 0], ["1.2.3", 5]], "points[1]: expected"),
    ("devices.0.processes.2.memory.points", [[0, 0], 7], "points[1]: expected [age, size]"),
    ("devices.0.processes.2.memory.points", [[0, 0]] * 100_001, "at most 100000 entries"),
    ("devices.0.processes.2.memory.points", "many", "points: expected a list, got 'many'"),
    ("devices.0.processes.2.memory.file", 5, "memory.file: expected a string"),
    ("devices.0.processes.2.memory.file", "a\0b", "memory.file: expected a string"),
    ("devices.0.reserved", "100GiB", "reserved: must not exceed memory"),
    ("devices.0.memory", "2PiB", "expected a size"),
    ("devices.0.memory", "9" * 30 + "TiB", "must be between 0 and"),
    ("devices.0.unsupported", [["gpm"]], "unknown feature(s) [['gpm']]"),
    ("devices.0.unsupported", "gpm", "unknown feature(s) 'gpm'"),
    ("devices.0.pci_bus_id", "x" * 40, "expected a PCI address"),
    ("devices.0.memory_partition", "NPS3", "must be one of NPS1, NPS2, NPS4, NPS8"),
    ("devices.0.partition_memory", "shared", "must be one of split, pool"),
    ("devices.0.pcie", "fast", "devices[0].pcie: expected a mapping, got 'fast'"),
    ("devices.0.instances", [{}] * 9, "instances: at most 8 entries"),
    ("devices.0.events", [{"at": 0, "kind": "ecc"}] * 257, "events: at most 256 entries"),
    ("devices.0.processes", {"pid": 5}, "processes: expected a list"),
    ("devices", [{}] * 65, "devices: at most 64 entries"),
    ("devices.0.fans", 9, "devices[0].fans: must be between 0 and 8"),
    ("devices.0.fans", "two", "devices[0].fans: expected an integer"),
    ("devices.0.links", {"count": 19}, "devices[0].links.count: must be between 0 and 18"),
    ("devices.0.links", {"speed": "fast"}, "devices[0].links.speed: expected a number"),
    ("devices.0.links", {"lanes": 4}, "devices[0].links.lanes: unknown key"),
    ("devices.0.power", {"max": 700, "limit": 100, "min": 200},
     "devices[0].power.limit: must not be below power.min (200 W)"),
    ("devices.0.power", {"max": 700, "min": 800}, "devices[0].power.min: must be between 0"),
    ("devices.0.events", [{"at": 0, "kind": "link_down", "link": 18}],
     "events[0].link: must be between 0 and 17"),
    ("devices.0.events", [{"at": 0, "kind": "link_errors", "error": "fcs"}],
     "error: must be one of crc, replay, recovery"),
    ("duration", "500ms", "duration: must be at least 1s"),
    ("seed", -1, "seed: must be between 0 and"),
    ("name", {"a": 1}, "name: expected a string"),
])
def test_malformed_values(path, value, fragment):
    refused(with_value(path, value), fragment)


def test_a_link_event_names_a_link_the_device_has():
    data = copy.deepcopy(BASE)
    data["devices"][0]["links"] = {"count": 4}
    data["devices"][0]["events"] = [{"at": 0, "kind": "link_errors", "link": 4, "count": 3}]
    refused(data, "s.yaml: devices[0].events[0].link: the device has 4 links (links.count), "
                  "got 4")
    data["devices"][0]["events"][0]["link"] = 3
    assert parse(data, "s.yaml").devices[0].events[0].link == 3


def test_duration_bounds_repeats_per_wall_second():
    data = with_value("time_acceleration", 36000)
    data["duration"] = "30m"
    refused(data, "duration: must be at least 3600s", "10 repeats a wall-clock second")
    data["duration"] = "2h"
    assert parse(data, "s.yaml").duration == 7200


def test_too_many_processes_in_all():
    procs = [{"pid": 10_000 + i, "memory": {"pattern": "constant"}} for i in range(8200)]
    data = {"devices": [{"processes": procs[i:8192:8]} for i in range(8)]}
    assert sum(len(d.processes) for d in parse(data).devices) == 8192
    data["devices"].append({"processes": procs[8192:]})
    with pytest.raises(ScenarioError, match="at most 8192 processes in all"):
        parse(data)


def test_the_largest_host_fits_in_a_file(tmp_path):
    """64 GPUs with 128 named, containerised processes each (benchmarks/scale.py's largest
    size) load from a file: more than a configuration's 1 MiB and 100,000 values."""
    data = {"devices": [{"processes": [
        {"pid": 10_000 + g * 1000 + p, "name": f"worker{p}", "container": f"{g:02x}{p:02x}" * 16,
         "utilization": 0.02, "memory": {"pattern": "constant", "size": f"{256 + p}MiB"}}
        for p in range(128)]} for g in range(64)]}
    path = write_yaml(tmp_path / "big.yaml", data)
    assert path.stat().st_size > 2**20
    assert sum(len(d.processes) for d in load(path).devices) == 8192


def test_an_unknown_huge_key_is_cut():
    refused({"devices": [{"x" * 100_000: 1}]}, "unknown key")


def test_files(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("devices:\n  - model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ScenarioError, match=r"^scenario file .*latin1.yaml: not UTF-8 text"):
        load(bad)
    lol = tmp_path / "lol.yaml"
    lol.write_text(BILLION_LAUGHS)
    with pytest.raises(ScenarioError, match=r"lol.yaml: not valid YAML .*aliases are expanded"):
        load(lol)
    with pytest.raises(ScenarioError, match=r"^scenario file /dev/zero: larger than 4 MiB$"):
        load("/dev/zero")
    deep = tmp_path / "deep.yaml"
    deep.write_text("devices: " + "[" * 10_000)
    with pytest.raises(ScenarioError, match=r"deep.yaml: not valid YAML .*nest"):
        load(deep)


@pytest.mark.parametrize("content, fragment", [
    (b"0,1\n60\n", "line 2: expected two columns"),
    (b"0,1\n60,1,2\n", "line 2: expected two columns"),
    (b"0,1\nabc,5\n", "points[1]: expected a duration"),
    (b"0,1\n1.2.3,5\n", "points[1]: expected a duration"),
    (b"0,1\n60,lots\n", "points[1]: expected a size"),
    (b"0,1\n60,nan\n", "points[1]: expected a size"),
    (b"0,\xff\n", "is not UTF-8 text"),
    (b"", "a replay needs points or a file"),
    (b"0,1\n" * 100_002, "more than 100000 rows"),
])
def test_replay_files(tmp_path, content, fragment):
    (tmp_path / "trace.csv").write_bytes(content)
    s = write_yaml(tmp_path / "s.yaml", {"devices": [{"processes": [
        {"pid": 10, "memory": {"pattern": "replay", "file": "trace.csv"}}]}]})
    with pytest.raises(ScenarioError) as e:
        load(s)
    msg = str(e.value)
    assert "\n" not in msg and fragment in msg, msg
    assert "devices[0].processes[0].memory" in msg


def test_a_replay_file_that_never_ends(tmp_path):
    s = write_yaml(tmp_path / "s.yaml", {"devices": [{"processes": [
        {"pid": 10, "memory": {"pattern": "replay", "file": "/dev/zero"}}]}]})
    with pytest.raises(ScenarioError, match=r"memory\.file: /dev/zero is larger than 16 MiB"):
        load(s)


def test_the_documented_bounds_are_the_module_s():
    text = (scenario_mod.Path(__file__).resolve().parent.parent / "docs" /
            "simulation.md").read_text()
    for figure in ("64 devices", "1,024 processes", "8,192", "256 events", "8 instances",
                   "10,000", "1 s apart", "one second", "10 times", "100,000 points",
                   "16 MiB", "1 PiB", "1 TiB/s", "a year"):
        assert figure in text, figure
    assert "at most 18 links" in text and scenario_mod.MAX_LINKS == 18
    assert (scenario_mod.MAX_DEVICES, scenario_mod.MAX_PROCESSES,
            scenario_mod.MAX_ALL_PROCESSES, scenario_mod.MAX_EVENTS,
            scenario_mod.MAX_INSTANCES, scenario_mod.MAX_EVENT_COUNT,
            scenario_mod.MIN_SPACING, scenario_mod.MIN_CYCLE,
            scenario_mod.MAX_CYCLES_PER_SECOND, scenario_mod.MAX_POINTS) == (
        64, 1024, 8192, 256, 8, 10_000, 1.0, 1.0, 10, 100_000)


def test_xid_repeats_are_listed_without_walking_all_of_them():
    """The largest count allowed: the events in a window are exactly the ones due in it."""
    sim = Simulation(parse({"devices": [{"events": [
        {"at": 0, "kind": "xid", "code": 48, "count": 10_000, "spacing": "1s"}]}]}))
    try:
        dev = sim.world.devices[0]
        assert dev.events_between(5000.5, 5002.5) == [(5001.0, 8, 48), (5002.0, 8, 48)]
        assert dev.events_between(-1, 0) == [(0.0, 8, 48)]
        assert dev.events_between(9999, 20000) == []
        assert len(dev.events_between(-1, 20000)) == 10_000
    finally:
        sim.close()


def test_a_file_read_through_the_json_compaction_gives_the_same_scenario(tmp_path):
    """load() copies a parse through JSON text so that PyYAML's garbage leaves its arenas
    (scenario._json_text); what comes out is what the YAML said."""
    path = write_yaml(tmp_path / "s.yaml", BASE)
    from gpuprobe.daemon.core import safeyaml

    assert scenario_mod._json_text(safeyaml.load_file(path)) is not None
    assert load(path) == parse(copy.deepcopy(BASE), f"scenario file {path}", tmp_path)


@pytest.mark.parametrize("data", [{"at": __import__("datetime").date(2026, 1, 1)},
                                  {1: "an int key"}, [b"bytes"]])
def test_what_json_cannot_hold_is_not_compacted(data):
    assert scenario_mod._json_text(data) is None
