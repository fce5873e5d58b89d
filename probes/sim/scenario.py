"""Scenario files: YAML descriptions of simulated GPUs, their processes and their troubles.

The format is documented in ``docs/simulation.md``; the built-in default is
``scenarios/default.yaml`` next to this file. Parsing errors raise :class:`ScenarioError`
with the file and the dotted key, printed by the CLI as one line.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpuprobe.daemon.config import ConfigError, parse_duration
from gpuprobe.daemon.config import parse_rate as config_parse_rate
from gpuprobe.daemon.config import parse_size as config_parse_size

from .patterns import PATTERNS, MemoryPattern

EVENT_KINDS = ("xid", "thermal_throttle", "power_cap", "fall_off_bus", "ecc", "row_remap")
FEATURES = ("power_limit", "memory_temperature", "gpm", "ecc", "bar1", "encoder",
            "throttle_counters", "pcie_counters", "remapped_rows", "energy", "utilization",
            "edge_temperature", "fan", "gtt", "pcie_throughput", "violation_status",
            "process_engine_time", "xid_events")


class ScenarioError(ValueError):
    """A scenario problem, phrased as one line naming the key."""


def parse_size(value: Any, key: str) -> float:
    """Bytes from an integer or a string such as ``512MiB`` or ``80GiB``."""
    try:
        return config_parse_size(value, key)
    except ConfigError as e:
        raise ScenarioError(str(e)) from None


def parse_rate(value: Any, key: str) -> float:
    """Bytes per second from a string such as ``20MiB/min``."""
    try:
        return config_parse_rate(value, key)
    except ConfigError as e:
        raise ScenarioError(str(e).replace("1MiB/min", "20MiB/min")) from None


def _seconds(value: Any, key: str) -> float:
    try:
        return parse_duration(value, key)
    except ConfigError as e:
        raise ScenarioError(str(e)) from None


@dataclass(frozen=True)
class ProcessSpec:
    pid: int
    name: str
    memory: MemoryPattern
    start: float = 0.0
    end: float | None = None
    utilization: float = 0.5
    container: str | None = None
    pod: str | None = None
    instance: int | None = None  # MIG instance / partition index it runs in


@dataclass(frozen=True)
class EventSpec:
    at: float
    kind: str
    duration: float = 0.0
    code: int = 0
    count: int = 1
    spacing: float = 10.0
    corrected: int = 0
    uncorrected: int = 0


@dataclass(frozen=True)
class InstanceSpec:
    profile: str
    memory: float


@dataclass(frozen=True)
class DeviceSpec:
    vendor: str
    model: str
    architecture: str
    memory: float
    reserved: float
    serial: str
    uuid: str | None
    pci_bus_id: str | None
    max_generation: int
    max_width: int
    generation: int
    width: int
    idle_downtrain: bool
    replay_rate: float  # replays per second
    idle_watts: float
    max_watts: float
    limit_watts: float
    idle_celsius: float
    busy_celsius: float
    slowdown_celsius: float
    shutdown_celsius: float
    max_operating_celsius: float
    memory_offset_celsius: float
    sm_max_hz: float
    sm_idle_hz: float
    memory_hz: float
    ecc: bool
    processes: tuple[ProcessSpec, ...] = ()
    events: tuple[EventSpec, ...] = ()
    instances: tuple[InstanceSpec, ...] = ()
    partition: str | None = None  # AMD compute partition mode, e.g. "CPX"
    compute_mode: str = "default"  # or exclusive_process, prohibited
    unsupported: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scenario:
    name: str
    time_acceleration: float
    duration: float | None
    seed: int
    devices: tuple[DeviceSpec, ...] = field(default=())


class _Reader:
    """Typed access to one YAML mapping with dotted keys in the errors."""

    def __init__(self, data: Any, key: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{key or 'top level'}: expected a mapping")
        for k in data:
            if k not in known:
                close = difflib.get_close_matches(str(k), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ScenarioError(f"{key + '.' if key else ''}{k}: unknown key{hint}")
        self.data, self.key = data, key

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def num(self, name: str, default: float, lo: float | None = None,
            hi: float | None = None) -> float:
        v = self.data.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ScenarioError(f"{self.sub(name)}: expected a number, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ScenarioError(f"{self.sub(name)}: must be between {lo} and {hi}, got {v}")
        return float(v)

    def int_(self, name: str, default: int, lo: int = 0) -> int:
        v = self.data.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ScenarioError(f"{self.sub(name)}: expected an integer >= {lo}, got {v!r}")
        return v

    def str_(self, name: str, default: str | None = None) -> str | None:
        v = self.data.get(name, default)
        if v is not None and not isinstance(v, str):
            raise ScenarioError(f"{self.sub(name)}: expected a string, got {v!r}")
        return v

    def bool_(self, name: str, default: bool) -> bool:
        v = self.data.get(name, default)
        if not isinstance(v, bool):
            raise ScenarioError(f"{self.sub(name)}: expected true or false, got {v!r}")
        return v

    def size(self, name: str, default: Any) -> float:
        return parse_size(self.data.get(name, default), self.sub(name))

    def seconds(self, name: str, default: Any) -> float:
        return _seconds(self.data.get(name, default), self.sub(name))

    def hertz(self, name: str, default: float) -> float:
        v = self.data.get(name, default)
        if isinstance(v, str) and v.upper().endswith("MHZ"):
            return float(v[:-3]) * 1e6
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        raise ScenarioError(f"{self.sub(name)}: expected a clock such as 1980MHz, got {v!r}")

    def items(self, name: str) -> list[tuple[str, Any]]:
        v = self.data.get(name) or []
        if not isinstance(v, list):
            raise ScenarioError(f"{self.sub(name)}: expected a list")
        return [(f"{self.sub(name)}[{i}]", item) for i, item in enumerate(v)]


def _memory(data: Any, key: str, base_dir: Path | None) -> MemoryPattern:
    r = _Reader(data, key, ("pattern", "size", "base", "low", "high", "start", "plateau", "peak",
                            "rate", "step", "every", "period", "ramp", "peak_duration", "noise",
                            "points", "file", "loop", "free_at"))
    kind = r.str_("pattern")
    if kind not in PATTERNS:
        raise ScenarioError(f"{r.sub('pattern')}: must be one of {', '.join(PATTERNS)}; "
                            f"got {kind!r}")
    kw: dict[str, Any] = {"kind": kind, "noise": r.size("noise", 0)}
    if r.get("free_at") is not None:
        kw["free_at"] = r.seconds("free_at", 0)
    if kind == "constant":
        kw["base"] = r.size("size", 0)
    elif kind == "leak":
        kw["base"], kw["rate"] = r.size("base", 0), parse_rate(r.get("rate"), r.sub("rate"))
    elif kind == "staircase":
        kw["base"], kw["step"] = r.size("base", 0), r.size("step", "64MiB")
        kw["period"] = r.seconds("every", "5m")
    elif kind == "sawtooth":
        kw["base"], kw["peak"] = r.size("low", 0), r.size("high", "1GiB")
        kw["period"] = r.seconds("period", "5m")
    elif kind == "warmup":
        kw["base"], kw["peak"] = r.size("start", 0), r.size("plateau", "1GiB")
        kw["ramp"] = r.seconds("ramp", "10m")
    elif kind == "epochs":
        kw["base"], kw["peak"] = r.size("base", 0), r.size("peak", "1GiB")
        kw["period"], kw["ramp"] = r.seconds("period", "30m"), r.seconds("peak_duration", "2m")
    elif kind == "replay":
        kw["points"], kw["loop"] = _points(r, base_dir), r.bool_("loop", False)
    if kind in ("staircase", "sawtooth", "epochs") and kw["period"] <= 0:
        raise ScenarioError(f"{key}: period must be positive")
    if kind == "warmup" and kw["ramp"] <= 0:
        raise ScenarioError(f"{r.sub('ramp')}: must be positive")
    return MemoryPattern(**kw)


def _points(r: _Reader, base_dir: Path | None) -> tuple[tuple[float, float], ...]:
    """Replay points from ``points: [[age, size], ...]`` or a two-column CSV ``file``."""
    rows: list[tuple[Any, Any]] = []
    if r.get("file"):
        path = Path(r.get("file"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [(row[0], row[1]) for row in csv.reader(f)
                        if row and not row[0].lstrip().startswith("#")]
        except (OSError, IndexError) as e:
            raise ScenarioError(f"{r.sub('file')}: cannot read {path}: {e}") from None
        if rows and not re.match(r"^\s*[\d.]", str(rows[0][0])):
            rows = rows[1:]  # a header line
    else:
        for key, item in r.items("points"):
            if not isinstance(item, list) or len(item) != 2:
                raise ScenarioError(f"{key}: expected [age, size]")
            rows.append((item[0], item[1]))
    if not rows:
        raise ScenarioError(f"{r.key}: a replay needs points or a file")
    pts = []
    for i, (t, v) in enumerate(rows):
        key = f"{r.key}.points[{i}]"
        try:
            t = float(t) if not isinstance(t, str) or re.fullmatch(r"[\d.]+", t.strip()) \
                else _seconds(t, key)
        except ValueError:
            raise ScenarioError(f"{key}: bad time {t!r}") from None
        v = parse_size(float(v) if isinstance(v, str) and re.fullmatch(r"[\d.]+", v.strip())
                       else v, key)
        pts.append((float(t), v))
    if any(b[0] < a[0] for a, b in itertools.pairwise(pts)):
        raise ScenarioError(f"{r.key}: replay times must not go backwards")
    return tuple(pts)


def _process(data: Any, key: str, base_dir: Path | None) -> ProcessSpec:
    r = _Reader(data, key, ("pid", "name", "memory", "start", "end", "utilization",
                            "container", "pod", "instance"))
    container = r.str_("container")
    if container is not None and not re.fullmatch(r"[0-9a-f]{64}", container):
        raise ScenarioError(f"{r.sub('container')}: expected a 64-hex-digit container id")
    return ProcessSpec(
        pid=r.int_("pid", 0, lo=2),
        name=r.str_("name", "python3") or "python3",
        memory=_memory(r.get("memory"), r.sub("memory"), base_dir),
        start=r.seconds("start", 0),
        end=r.seconds("end", 0) if r.get("end") is not None else None,
        utilization=r.num("utilization", 0.5, 0.0, 1.0),
        container=container,
        pod=r.str_("pod"),
        instance=r.int_("instance", 0) if r.get("instance") is not None else None,
    )


def _event(data: Any, key: str) -> EventSpec:
    r = _Reader(data, key, ("at", "kind", "duration", "code", "count", "spacing", "corrected",
                            "uncorrected"))
    kind = r.str_("kind")
    if kind not in EVENT_KINDS:
        raise ScenarioError(f"{r.sub('kind')}: must be one of {', '.join(EVENT_KINDS)}; "
                            f"got {kind!r}")
    if kind == "xid" and r.get("code") is None:
        raise ScenarioError(f"{r.sub('code')}: an xid event needs a code")
    return EventSpec(
        at=r.seconds("at", 0), kind=kind, duration=r.seconds("duration", 0),
        code=r.int_("code", 0), count=r.int_("count", 1, lo=1),
        spacing=r.seconds("spacing", "10s"), corrected=r.int_("corrected", 0),
        uncorrected=r.int_("uncorrected", 0))


_MODELS = {
    # model defaults: (architecture, memory, max gen, width, idle W, max W, sm max MHz, mem MHz)
    "nvidia": ("hopper", "80GiB", 5, 16, 70.0, 700.0, 1980e6, 2619e6),
    "amd": ("cdna3", "192GiB", 5, 16, 140.0, 750.0, 2100e6, 1300e6),
}


def _device(data: Any, key: str, index: int, base_dir: Path | None) -> DeviceSpec:
    r = _Reader(data, key, ("vendor", "model", "architecture", "memory", "reserved", "serial",
                            "uuid", "pci_bus_id", "pcie", "power", "thermal", "clocks", "ecc",
                            "processes", "events", "instances", "partition", "unsupported",
                            "compute_mode"))
    vendor = r.str_("vendor", "nvidia")
    if vendor not in _MODELS:
        raise ScenarioError(f"{r.sub('vendor')}: must be nvidia or amd, got {vendor!r}")
    arch, mem, gen, width, idle_w, max_w, sm_hz, mem_hz = _MODELS[vendor]
    pcie = _Reader(r.get("pcie") or {}, r.sub("pcie"),
                   ("max_generation", "max_width", "generation", "width", "idle_downtrain",
                    "replays_per_minute"))
    power = _Reader(r.get("power") or {}, r.sub("power"), ("idle", "max", "limit"))
    thermal = _Reader(r.get("thermal") or {}, r.sub("thermal"),
                      ("idle", "busy", "slowdown", "shutdown", "max_operating", "memory_offset"))
    clocks = _Reader(r.get("clocks") or {}, r.sub("clocks"), ("sm_max", "sm_idle", "memory"))
    max_gen = int(pcie.num("max_generation", gen, 1, 6))
    max_width = int(pcie.num("max_width", width, 1, 32))
    unsupported = r.get("unsupported") or []
    if not isinstance(unsupported, list) or any(u not in FEATURES for u in unsupported):
        bad = [u for u in unsupported if u not in FEATURES] if isinstance(unsupported, list) \
            else unsupported
        raise ScenarioError(f"{r.sub('unsupported')}: unknown feature(s) {bad!r}; known: "
                            f"{', '.join(FEATURES)}")
    processes = tuple(_process(p, k, base_dir) for k, p in r.items("processes"))
    instances = tuple(
        InstanceSpec(profile=_Reader(i, k, ("profile", "memory")).str_("profile", "3g.40gb")
                     or "", memory=_Reader(i, k, ("profile", "memory")).size("memory", "40GiB"))
        for k, i in r.items("instances"))
    for p in processes:
        if p.instance is not None and p.instance >= max(len(instances), 1):
            raise ScenarioError(f"{key}: process {p.pid} names instance {p.instance}, which "
                                f"does not exist")
    limit = power.num("limit", power.num("max", max_w))
    return DeviceSpec(
        vendor=vendor,
        model=r.str_("model", "NVIDIA H100 80GB HBM3" if vendor == "nvidia"
                     else "AMD Instinct MI300X") or "",
        architecture=r.str_("architecture", arch) or arch,
        memory=r.size("memory", mem),
        reserved=r.size("reserved", "512MiB"),
        serial=r.str_("serial", f"SIM{index:010d}") or "",
        uuid=r.str_("uuid"),
        pci_bus_id=r.str_("pci_bus_id"),
        max_generation=max_gen,
        max_width=max_width,
        generation=int(pcie.num("generation", max_gen, 1, max_gen)),
        width=int(pcie.num("width", max_width, 1, max_width)),
        idle_downtrain=pcie.bool_("idle_downtrain", True),
        replay_rate=pcie.num("replays_per_minute", 0.0, 0.0) / 60.0,
        idle_watts=power.num("idle", idle_w, 0.0),
        max_watts=power.num("max", max_w, 0.0),
        limit_watts=limit,
        idle_celsius=thermal.num("idle", 32.0),
        busy_celsius=thermal.num("busy", 68.0),
        slowdown_celsius=thermal.num("slowdown", 87.0),
        shutdown_celsius=thermal.num("shutdown", 92.0),
        max_operating_celsius=thermal.num("max_operating", 85.0),
        memory_offset_celsius=thermal.num("memory_offset", 6.0),
        sm_max_hz=clocks.hertz("sm_max", sm_hz),
        sm_idle_hz=clocks.hertz("sm_idle", 345e6),
        memory_hz=clocks.hertz("memory", mem_hz),
        ecc=r.bool_("ecc", True),
        processes=processes,
        events=tuple(_event(e, k) for k, e in r.items("events")),
        instances=instances,
        partition=r.str_("partition"),
        compute_mode=_compute_mode(r),
        unsupported=frozenset(unsupported),
    )


COMPUTE_MODES = ("default", "exclusive_process", "prohibited")


def _compute_mode(r: _Reader) -> str:
    mode = r.str_("compute_mode", "default") or "default"
    if mode not in COMPUTE_MODES:
        raise ScenarioError(f"{r.sub('compute_mode')}: must be one of "
                            f"{', '.join(COMPUTE_MODES)}; got {mode!r}")
    return mode


def parse(data: Any, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    try:
        r = _Reader(data, "", ("name", "time_acceleration", "duration", "seed", "devices"))
        devices = tuple(_device(d, k, i, base_dir) for i, (k, d) in enumerate(r.items("devices")))
        if not devices:
            raise ScenarioError("devices: a scenario needs at least one device")
        pids = [p.pid for d in devices for p in d.processes]
        dup = {p for p in pids if pids.count(p) > 1}
        if dup:
            raise ScenarioError(f"devices: pid(s) {sorted(dup)} used by more than one process")
        duration = r.get("duration")
        return Scenario(
            name=r.str_("name", "scenario") or "scenario",
            time_acceleration=r.num("time_acceleration", 1.0, 0.001, 100000.0),
            duration=_seconds(duration, "duration") if duration is not None else None,
            seed=r.int_("seed", 0),
            devices=devices,
        )
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from None


def load(path: str | Path | None) -> Scenario:
    """A scenario file, or the built-in default when ``path`` is None or empty."""
    if not path:
        text = resources.files(__package__).joinpath("scenarios/default.yaml").read_text()
        return parse(yaml.safe_load(text), "built-in default scenario")
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ScenarioError(f"scenario file {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ScenarioError(f"scenario file {p}: not valid YAML{where}: "
                            f"{getattr(e, 'problem', e)}") from None
    return parse(data, f"scenario file {p}", p.parent)
