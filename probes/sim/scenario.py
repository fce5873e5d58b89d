"""Scenario files: YAML descriptions of simulated GPUs, their processes and their troubles.

The format is documented in ``docs/simulation.md``; the built-in default is
``scenarios/default.yaml`` next to this file. Parsing errors raise :class:`ScenarioError`
with the file and the dotted key, printed by the CLI as one line.
"""

from __future__ import annotations

import csv
import difflib
import gc
import io
import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpuprobe.daemon.core import safeyaml
from gpuprobe.daemon.core.config import ConfigError, parse_duration
from gpuprobe.daemon.core.config import parse_rate as config_parse_rate
from gpuprobe.daemon.core.config import parse_size as config_parse_size
from gpuprobe.daemon.core.safeyaml import as_float, cut, display_path, short
from gpuprobe.probes.sim.patterns import PATTERNS, MemoryPattern

EVENT_KINDS = ("xid", "thermal_throttle", "power_cap", "fall_off_bus", "ecc", "row_remap",
               "link_down", "link_errors", "reset_required")
# The kinds of a link_errors event's `error` (daemon/core/model.py LINK_ERROR_KINDS).
LINK_ERRORS = ("crc", "replay", "recovery")
MAX_LINKS = 18  # NVLinks of an H100 or B200; an MI300X has 7 XGMI links
FEATURES = ("power_limit", "memory_temperature", "gpm", "ecc", "bar1", "encoder",
            "throttle_counters", "pcie_counters", "remapped_rows", "energy", "utilization",
            "edge_temperature", "fan", "gtt", "pcie_throughput", "violation_status",
            "process_engine_time", "xid_events", "process_memory")


class ScenarioError(ValueError):
    """A scenario problem, phrased as one line naming the key."""


# Bounds on what a scenario may ask for: beyond them a simulation would pin a CPU or fill
# memory (docs/simulation.md lists them).
MAX_DEVICES = 64
MAX_PROCESSES = 1024  # per device
# A file that describes the largest host (64 GPUs, 8,192 processes with names and containers)
# is about 1.3 MiB and 100,000 values: a scenario may be four times a configuration's bounds.
SCENARIO_FILE_BYTES = 4 * safeyaml.MAX_BYTES
SCENARIO_FILE_NODES = 4 * safeyaml.MAX_NODES
MAX_ALL_PROCESSES = 8192  # over all devices: 64 GPUs x 128, the largest benchmarks/scale.py size
MAX_EVENTS = 256  # per device
MAX_INSTANCES = 8  # MIG allows 7 instances, an AMD CPX partition 8
MAX_EVENT_COUNT = 10_000  # repeats of one xid event, row remaps of one event
MAX_ERROR_COUNT = 10**9  # corrected or uncorrected ECC errors of one event
MIN_SPACING = 1.0  # seconds between the repeats of one xid event
MAX_TIME = 365 * 86400.0  # seconds: every time and duration in a scenario
MIN_CYCLE = 1.0  # seconds: the shortest scenario duration
MAX_CYCLES_PER_SECOND = 10  # repeats per wall-clock second: duration >= acceleration / 10
MAX_BYTES = float(2**50)  # 1 PiB: any size
MAX_RATE = float(2**40)  # 1 TiB/s: any rate
MAX_HZ = 10e9
MAX_POINTS = 100_000  # replay points
MAX_REPLAY_BYTES = 16 * 2**20  # a replay CSV file
MAX_STRING = 256
MAX_PID = 4_194_304  # Linux's largest pid_max


def _wrap(fn: Any, value: Any, key: str, *args: Any) -> float:
    try:
        return fn(value, key, *args)
    except ConfigError as e:
        raise ScenarioError(str(e)) from None


def _bounded(x: float, key: str, lo: float, hi: float, show: Any = None) -> float:
    if not lo <= x <= hi:  # also NaN
        raise ScenarioError(f"{key}: must be between {_num(lo)} and {_num(hi)}, got "
                            f"{short(x if show is None else show)}")
    return x


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def parse_size(value: Any, key: str) -> float:
    """Bytes from an integer or a string such as ``512MiB`` or ``80GiB``; finite, at most
    1 PiB."""
    return _bounded(_wrap(config_parse_size, value, key), key, 0, MAX_BYTES, value)


def parse_rate(value: Any, key: str) -> float:
    """Bytes per second from a string such as ``20MiB/min``; finite, at most 1 TiB/s either
    way."""
    try:
        rate = config_parse_rate(value, key)
    except ConfigError as e:
        raise ScenarioError(str(e).replace("1MiB/min", "20MiB/min")) from None
    return _bounded(rate, key, -MAX_RATE, MAX_RATE, value)


def _seconds(value: Any, key: str) -> float:
    """A duration or a scenario time: finite, 0 to a year."""
    return _bounded(_wrap(parse_duration, value, key), key, 0, MAX_TIME, value)


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
    # the pod's name and namespace, in the kubelet's pod directory (probes/pods.py)
    pod_name: str | None = None
    namespace: str | None = None
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
    link: int = 0  # link_down, link_errors: which link
    error: str = "crc"  # link_errors: which counter grows by `count`


@dataclass(frozen=True)
class LinkSpec:
    """A device's GPU-to-GPU links (NVLink on NVIDIA, XGMI on AMD)."""

    count: int = 0
    version: int = 4  # NVLink version
    width: int = 16  # XGMI lanes per link
    speed_gbps: float = 32.0  # XGMI per lane
    # Share of each up link's rate a fully busy GPU sends and receives.
    busy_share: float = 0.25
    rate: float = 25e9  # bytes/s per direction per link at full use (NVLink 4: 25 GB/s)


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
    idle_pstate: int  # NVIDIA: the P-state of an idle GPU
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
    memory_partition: str = "NPS1"  # AMD memory partition mode: NPS1 one pool, NPS4 split
    # How a partition's handle reports memory: "split" (its own share, as amdsmi#97's
    # MI300A) or "pool" (the whole GPU's pool on every partition, as in ROCm/ROCm#4750)
    partition_memory: str = "split"
    compute_mode: str = "default"  # or exclusive_process, prohibited
    unsupported: frozenset[str] = frozenset()
    min_limit_watts: float = 0.0
    default_limit_watts: float = 0.0
    fans: int = 0  # fans on the board; data-centre GPUs have none
    links: LinkSpec = field(default_factory=LinkSpec)


@dataclass(frozen=True)
class AmdSoftware:
    """What the simulated AMD stack reports of itself. ``binding``: the amdsmi package's
    ``__version__`` (None: the installed package's own; the copy ROCm installs carries the
    amd-smi library version instead, e.g. 26.0.2 on ROCm 7.0.2)."""

    rocm: str = "7.0.2"
    library: str = "26.0.2"
    binding: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    time_acceleration: float
    duration: float | None
    seed: int
    devices: tuple[DeviceSpec, ...] = field(default=())
    amdsmi: AmdSoftware = field(default_factory=AmdSoftware)


class _Reader:
    """Typed access to one YAML mapping with dotted keys in the errors."""

    def __init__(self, data: Any, key: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{key or 'top level'}: expected a mapping, got "
                                f"{short(data)}")
        for k in data:
            if k not in known:
                name = cut(str(k), 40)
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ScenarioError(f"{key + '.' if key else ''}{name}: unknown key{hint}")
        self.data, self.key = data, key

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def reader(self, name: str, known: tuple[str, ...]) -> _Reader:
        """The mapping under ``name`` (absent, null or false: empty)."""
        v = self.data.get(name)
        return _Reader({} if v is None or v is False else v, self.sub(name), known)

    def num(self, name: str, default: float, lo: float, hi: float) -> float:
        v = self.data.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ScenarioError(f"{self.sub(name)}: expected a number, got {short(v)}")
        x = as_float(v)
        if not math.isfinite(x):
            raise ScenarioError(f"{self.sub(name)}: expected a finite number, got {short(v)}")
        return _bounded(x, self.sub(name), lo, hi, v)

    def int_(self, name: str, default: int, lo: int = 0, hi: int = 2**31 - 1) -> int:
        v = self.data.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ScenarioError(f"{self.sub(name)}: expected an integer, got {short(v)}")
        return int(_bounded(v, self.sub(name), lo, hi))

    def str_(self, name: str, default: str | None = None) -> str | None:
        v = self.data.get(name, default)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_STRING or "\0" in v):
            raise ScenarioError(f"{self.sub(name)}: expected a string of at most {MAX_STRING} "
                                f"characters, got {short(v)}")
        return v

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str:
        v = self.data.get(name, default)
        if not isinstance(v, str) or v not in choices:
            # the value cut short: the choices (nine event kinds) fill most of the line
            raise ScenarioError(f"{self.sub(name)}: must be one of {', '.join(choices)}; "
                                f"got {short(v, 24)}")
        return v

    def bool_(self, name: str, default: bool) -> bool:
        v = self.data.get(name, default)
        if not isinstance(v, bool):
            raise ScenarioError(f"{self.sub(name)}: expected true or false, got {short(v)}")
        return v

    def size(self, name: str, default: Any) -> float:
        return parse_size(self.data.get(name, default), self.sub(name))

    def seconds(self, name: str, default: Any) -> float:
        return _seconds(self.data.get(name, default), self.sub(name))

    def hertz(self, name: str, default: float) -> float:
        v = self.data.get(name, default)
        what = f"{self.sub(name)}: expected a clock such as 1980MHz, got {short(v)}"
        if isinstance(v, str) and len(v) <= 40:
            m = re.fullmatch(r"\s*(\d{1,6}(?:\.\d{1,6})?)\s*MHz\s*", v, re.IGNORECASE)
            if not m:
                raise ScenarioError(what)
            hz = float(m.group(1)) * 1e6
        elif isinstance(v, int | float) and not isinstance(v, bool):
            hz = as_float(v)
            if not math.isfinite(hz):
                raise ScenarioError(what)
        else:
            raise ScenarioError(what)
        return _bounded(hz, self.sub(name), 0, MAX_HZ, v)

    def items(self, name: str, most: int) -> list[tuple[str, Any]]:
        v = self.data.get(name)
        if v is None or v is False:
            v = []
        if not isinstance(v, list):
            raise ScenarioError(f"{self.sub(name)}: expected a list, got {short(v)}")
        if len(v) > most:
            raise ScenarioError(f"{self.sub(name)}: at most {most} entries, got {len(v)}")
        return [(f"{self.sub(name)}[{i}]", item) for i, item in enumerate(v)]


def _memory(data: Any, key: str, base_dir: Path | None) -> MemoryPattern:
    r = _Reader(data, key, ("pattern", "size", "base", "low", "high", "start", "plateau", "peak",
                            "rate", "step", "every", "period", "ramp", "peak_duration", "noise",
                            "points", "file", "loop", "free_at"))
    kind = r.choice("pattern", PATTERNS, None)
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


_PLAIN_NUMBER = re.compile(r"\s*\d{1,30}(?:\.\d{1,30})?\s*")


def _read_replay_file(r: _Reader, base_dir: Path | None) -> list[tuple[Any, Any]]:
    name = r.str_("file")
    assert name is not None
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    shown = display_path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_REPLAY_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"{r.sub('file')}: cannot read {shown}: "
                            f"{cut(e.strerror or str(e), 60)}") from None
    if len(raw) > MAX_REPLAY_BYTES:
        raise ScenarioError(f"{r.sub('file')}: {shown} is larger than "
                            f"{MAX_REPLAY_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{r.sub('file')}: {shown} is not UTF-8 text (byte {e.start})") \
            from None
    rows: list[tuple[Any, Any]] = []
    try:
        for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise ScenarioError(f"{r.sub('file')}: {shown} line {line}: expected two "
                                    f"columns, age and bytes")
            rows.append((row[0], row[1]))
            if len(rows) > MAX_POINTS + 1:
                raise ScenarioError(f"{r.sub('file')}: {shown}: more than {MAX_POINTS} rows")
    except csv.Error as e:
        raise ScenarioError(f"{r.sub('file')}: {shown}: {cut(str(e), 60)}") from None
    if rows and not re.match(r"^\s*[\d.]", rows[0][0]):
        rows = rows[1:]  # a header line
    return rows


def _points(r: _Reader, base_dir: Path | None) -> tuple[tuple[float, float], ...]:
    """Replay points from ``points: [[age, size], ...]`` or a two-column CSV ``file``."""
    rows: list[tuple[Any, Any]] = []
    if r.get("file"):
        rows = _read_replay_file(r, base_dir)
    else:
        for key, item in r.items("points", MAX_POINTS):
            if not isinstance(item, list) or len(item) != 2:
                raise ScenarioError(f"{key}: expected [age, size], got {short(item)}")
            rows.append((item[0], item[1]))
    if not rows:
        raise ScenarioError(f"{r.key}: a replay needs points or a file")
    if len(rows) > MAX_POINTS:
        raise ScenarioError(f"{r.key}: at most {MAX_POINTS} replay points, got {len(rows)}")
    pts = []
    for i, (t, v) in enumerate(rows):
        key = f"{r.key}.points[{i}]"
        # A CSV cell is text: a bare number there is seconds or bytes, as in YAML.
        if isinstance(t, str) and _PLAIN_NUMBER.fullmatch(t):
            t = float(t)
        if isinstance(v, str) and _PLAIN_NUMBER.fullmatch(v):
            v = float(v)
        pts.append((_seconds(t, key), parse_size(v, key)))
    if any(b[0] < a[0] for a, b in itertools.pairwise(pts)):
        raise ScenarioError(f"{r.key}: replay times must not go backwards")
    return tuple(pts)


_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def _process(data: Any, key: str, base_dir: Path | None) -> ProcessSpec:
    r = _Reader(data, key, ("pid", "name", "memory", "start", "end", "utilization",
                            "container", "pod", "pod_name", "namespace", "instance"))
    container = r.str_("container")
    if container is not None and not re.fullmatch(r"[0-9a-f]{64}", container):
        raise ScenarioError(f"{r.sub('container')}: expected a 64-hex-digit container id")
    pod = r.str_("pod")
    if pod is not None and not re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", pod):
        raise ScenarioError(f"{r.sub('pod')}: expected a pod UID (8-4-4-4-12 hex digits)")
    pod_name, namespace = r.str_("pod_name"), r.str_("namespace")
    for k, v, most in (("pod_name", pod_name, 253), ("namespace", namespace, 63)):
        if v is not None and not (len(v) <= most and _DNS_NAME.fullmatch(v)):
            raise ScenarioError(f"{r.sub(k)}: expected a Kubernetes name (lower-case letters, "
                                f"digits, '-' and '.', at most {most}), got {v!r}")
    if (pod_name is None) != (namespace is None) or (pod_name is not None and pod is None):
        raise ScenarioError(f"{r.key}: pod_name and namespace go together, with pod")
    return ProcessSpec(
        pid=r.int_("pid", 0, lo=2, hi=MAX_PID),
        name=r.str_("name", "python3") or "python3",
        memory=_memory(r.get("memory"), r.sub("memory"), base_dir),
        start=r.seconds("start", 0),
        end=r.seconds("end", 0) if r.get("end") is not None else None,
        utilization=r.num("utilization", 0.5, 0.0, 1.0),
        container=container,
        pod=pod,
        pod_name=pod_name,
        namespace=namespace,
        instance=r.int_("instance", 0, hi=MAX_INSTANCES - 1)
        if r.get("instance") is not None else None,
    )


def _event(data: Any, key: str) -> EventSpec:
    r = _Reader(data, key, ("at", "kind", "duration", "code", "count", "spacing", "corrected",
                            "uncorrected", "link", "error"))
    kind = r.choice("kind", EVENT_KINDS, None)
    if kind == "xid" and r.get("code") is None:
        raise ScenarioError(f"{r.sub('code')}: an xid event needs a code")
    count = r.int_("count", 1, lo=1, hi=MAX_EVENT_COUNT)
    spacing = r.seconds("spacing", "10s")
    if kind == "xid" and count > 1 and spacing < MIN_SPACING:
        raise ScenarioError(f"{r.sub('spacing')}: repeats must be at least {MIN_SPACING:g}s "
                            f"apart, got {spacing:g}s")
    return EventSpec(
        at=r.seconds("at", 0), kind=kind, duration=r.seconds("duration", 0),
        code=r.int_("code", 0, hi=65535), count=count, spacing=spacing,
        corrected=r.int_("corrected", 0, hi=MAX_ERROR_COUNT),
        uncorrected=r.int_("uncorrected", 0, hi=MAX_ERROR_COUNT),
        link=r.int_("link", 0, hi=MAX_LINKS - 1),
        error=r.choice("error", LINK_ERRORS, "crc"))


_MODELS = {
    # model defaults: (architecture, memory, max gen, width, idle W, max W, sm max MHz, mem MHz)
    # (links by architecture: _LINKS)
    "nvidia": ("hopper", "80GiB", 5, 16, 70.0, 700.0, 1980e6, 2619e6),
    "amd": ("cdna3", "192GiB", 5, 16, 140.0, 750.0, 2100e6, 1300e6),
}
_IDLE_AT_FULL_SPEED = ("hopper", "blackwell")
# architecture -> (links, NVLink version, bytes/s per direction per link); others have none
_LINKS = {"ampere": (12, 3, 25e9), "hopper": (18, 4, 25e9), "blackwell": (18, 5, 50e9),
          "cdna3": (7, 0, 64e9), "cdna2": (8, 0, 50e9)}
MAX_WATTS = 10_000.0
CELSIUS = (-100.0, 300.0)
_PCI_BUS_ID = re.compile(r"(?:[0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}):[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}"
                         r"\.[0-7]")


def _device(data: Any, key: str, index: int, base_dir: Path | None) -> DeviceSpec:
    r = _Reader(data, key, ("vendor", "model", "architecture", "memory", "reserved", "serial",
                            "uuid", "pci_bus_id", "pcie", "power", "thermal", "clocks", "ecc",
                            "processes", "events", "instances", "partition", "unsupported",
                            "compute_mode", "memory_partition", "partition_memory", "fans",
                            "links"))
    vendor = r.get("vendor", "nvidia")
    if not isinstance(vendor, str) or vendor not in _MODELS:
        raise ScenarioError(f"{r.sub('vendor')}: must be nvidia or amd, got {short(vendor)}")
    arch, mem, gen, width, idle_w, max_w, sm_hz, mem_hz = _MODELS[vendor]
    pcie = r.reader("pcie", ("max_generation", "max_width", "generation", "width",
                             "idle_downtrain", "replays_per_minute"))
    power = r.reader("power", ("idle", "max", "limit", "idle_pstate", "min", "default"))
    thermal = r.reader("thermal", ("idle", "busy", "slowdown", "shutdown", "max_operating",
                                   "memory_offset"))
    clocks = r.reader("clocks", ("sm_max", "sm_idle", "memory"))
    max_gen = pcie.int_("max_generation", gen, 1, 6)
    # The H100 of docs/hardware/ idles at P0 on a Gen5 link; older parts drop to P8, Gen1.
    full_speed_idle = (r.str_("architecture", arch) or arch) in _IDLE_AT_FULL_SPEED
    max_width = pcie.int_("max_width", width, 1, 32)
    unsupported = r.get("unsupported") or []
    if not isinstance(unsupported, list) or any(not isinstance(u, str) or u not in FEATURES
                                                for u in unsupported):
        bad = [u for u in unsupported if not isinstance(u, str) or u not in FEATURES] \
            if isinstance(unsupported, list) else unsupported
        first = bad[0] if isinstance(bad, list) and bad else bad
        close = difflib.get_close_matches(cut(first, 40), FEATURES, n=1) \
            if isinstance(first, str) else []
        hint = f"did you mean {close[0]!r}?" if close else "docs/simulation.md lists them"
        raise ScenarioError(f"{r.sub('unsupported')}: unknown feature(s) {short(bad, 40)}; "
                            f"{hint}")
    processes = tuple(_process(p, k, base_dir) for k, p in r.items("processes", MAX_PROCESSES))
    instances = []
    for k, i in r.items("instances", MAX_INSTANCES):
        ir = _Reader(i, k, ("profile", "memory"))
        instances.append(InstanceSpec(profile=ir.str_("profile", "3g.40gb") or "",
                                      memory=ir.size("memory", "40GiB")))
    for p in processes:
        if p.instance is not None and p.instance >= max(len(instances), 1):
            raise ScenarioError(f"{key}: process {p.pid} names instance {p.instance}, which "
                                f"does not exist")
    events = tuple(_event(e, k) for k, e in r.items("events", MAX_EVENTS))
    memory, reserved = r.size("memory", mem), r.size("reserved", "512MiB")
    if reserved > memory:
        raise ScenarioError(f"{r.sub('reserved')}: must not exceed memory ({memory:.0f} B)")
    max_watts = power.num("max", max_w, 0.0, MAX_WATTS)
    limit = power.num("limit", max_watts, 0.0, MAX_WATTS)
    default_limit = power.num("default", max_watts, 0.0, MAX_WATTS)
    min_limit = power.num("min", min(max_watts, max_watts / 2.5), 0.0, max_watts)
    if limit < min_limit:
        raise ScenarioError(f"{power.sub('limit')}: must not be below power.min "
                            f"({_num(min_limit)} W)")
    architecture = r.str_("architecture", arch) or arch
    count, version, rate = _LINKS.get(architecture, (0, 0, 0.0))
    lr = r.reader("links", ("count", "version", "width", "speed", "busy_share"))
    links = LinkSpec(count=lr.int_("count", count, 0, MAX_LINKS),
                     version=lr.int_("version", version or 4, 1, 9),
                     width=lr.int_("width", 16, 1, 32),
                     speed_gbps=lr.num("speed", 32.0, 0.0, 1000.0),
                     busy_share=lr.num("busy_share", 0.25, 0.0, 1.0),
                     rate=rate or 25e9)
    pci_bus_id = r.str_("pci_bus_id")
    if pci_bus_id is not None and not _PCI_BUS_ID.fullmatch(pci_bus_id):
        raise ScenarioError(f"{r.sub('pci_bus_id')}: expected a PCI address such as "
                            f"00000000:18:00.0, got {short(pci_bus_id)}")
    for i, e in enumerate(events):
        if e.kind in ("link_down", "link_errors") and e.link >= links.count:
            raise ScenarioError(f"{r.sub('events')}[{i}].link: the device has {links.count} "
                                f"links (links.count), got {e.link}")
    return DeviceSpec(
        vendor=vendor,
        model=r.str_("model", "NVIDIA H100 80GB HBM3" if vendor == "nvidia"
                     else "AMD Instinct MI300X") or "",
        architecture=architecture,
        memory=memory,
        reserved=reserved,
        serial=r.str_("serial", f"SIM{index:010d}") or "",
        uuid=r.str_("uuid"),
        pci_bus_id=pci_bus_id,
        max_generation=max_gen,
        max_width=max_width,
        generation=pcie.int_("generation", max_gen, 1, max_gen),
        width=pcie.int_("width", max_width, 1, max_width),
        idle_downtrain=pcie.bool_("idle_downtrain", not full_speed_idle),
        replay_rate=pcie.num("replays_per_minute", 0.0, 0.0, 1e6) / 60.0,
        idle_watts=power.num("idle", idle_w, 0.0, MAX_WATTS),
        idle_pstate=power.int_("idle_pstate", 0 if full_speed_idle else 8, 0, 15),
        max_watts=max_watts,
        limit_watts=limit,
        idle_celsius=thermal.num("idle", 32.0, *CELSIUS),
        busy_celsius=thermal.num("busy", 68.0, *CELSIUS),
        slowdown_celsius=thermal.num("slowdown", 87.0, *CELSIUS),
        shutdown_celsius=thermal.num("shutdown", 92.0, *CELSIUS),
        max_operating_celsius=thermal.num("max_operating", 85.0, *CELSIUS),
        memory_offset_celsius=thermal.num("memory_offset", 6.0, -100.0, 100.0),
        sm_max_hz=clocks.hertz("sm_max", sm_hz),
        sm_idle_hz=clocks.hertz("sm_idle", 345e6),
        memory_hz=clocks.hertz("memory", mem_hz),
        ecc=r.bool_("ecc", True),
        processes=processes,
        events=events,
        instances=tuple(instances),
        partition=r.str_("partition"),
        memory_partition=r.choice("memory_partition", MEMORY_PARTITIONS, "NPS1"),
        partition_memory=r.choice("partition_memory", PARTITION_MEMORY, "split"),
        compute_mode=r.choice("compute_mode", COMPUTE_MODES, "default"),
        unsupported=frozenset(unsupported),
        min_limit_watts=min_limit,
        default_limit_watts=default_limit,
        fans=r.int_("fans", 0, 0, 8),
        links=links,
    )


COMPUTE_MODES = ("default", "exclusive_process", "prohibited")
_VERSION = re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,6}")


def _amd_software(r: _Reader) -> AmdSoftware:
    a = r.reader("amdsmi", ("rocm_version", "library_version", "binding_version"))
    found = {}
    for key, name in (("rocm_version", "rocm"), ("library_version", "library"),
                      ("binding_version", "binding")):
        v = a.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not _VERSION.fullmatch(v):
            raise ScenarioError(f"{a.sub(key)}: expected a version such as \"7.0.2\" (quoted), "
                                f"got {short(v)}")
        found[name] = v
    return AmdSoftware(**found)
MEMORY_PARTITIONS = ("NPS1", "NPS2", "NPS4", "NPS8")
PARTITION_MEMORY = ("split", "pool")


def parse(data: Any, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    try:
        r = _Reader(data, "", ("name", "time_acceleration", "duration", "seed", "devices",
                               "amdsmi"))
        devices = tuple(_device(d, k, i, base_dir)
                        for i, (k, d) in enumerate(r.items("devices", MAX_DEVICES)))
        if not devices:
            raise ScenarioError("devices: a scenario needs at least one device")
        pids = Counter(p.pid for d in devices for p in d.processes)
        if sum(pids.values()) > MAX_ALL_PROCESSES:
            raise ScenarioError(f"devices: at most {MAX_ALL_PROCESSES} processes in all, got "
                                f"{sum(pids.values())}")
        dup = sorted(p for p, n in pids.items() if n > 1)
        if dup:
            raise ScenarioError(f"devices: pid(s) {short(dup, 40)} used by more than one "
                                f"process")
        acceleration = r.num("time_acceleration", 1.0, 0.001, 100000.0)
        duration = r.get("duration")
        if duration is not None:
            duration = _seconds(duration, "duration")
            shortest = max(MIN_CYCLE, acceleration / MAX_CYCLES_PER_SECOND)
            if duration < shortest:
                raise ScenarioError(f"duration: must be at least {shortest:g}s (one second, "
                                    f"and at most {MAX_CYCLES_PER_SECOND} repeats a wall-clock "
                                    f"second at time_acceleration {acceleration:g}), got "
                                    f"{duration:g}s")
        return Scenario(
            name=r.str_("name", "scenario") or "scenario",
            time_acceleration=acceleration,
            duration=duration,
            seed=r.int_("seed", 0, hi=2**63 - 1),
            devices=devices,
            amdsmi=_amd_software(r),
        )
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from None


def load(path: str | Path | None) -> Scenario:
    """A scenario file, or the built-in default when ``path`` is None or empty."""
    try:
        if not path:
            text = resources.files(__package__).joinpath("scenarios/default.yaml").read_text()
            return parse(safeyaml.loads(text, "built-in default scenario"),
                         "built-in default scenario")
        data = safeyaml.load_file(path, label="scenario file", max_bytes=SCENARIO_FILE_BYTES,
                                  max_nodes=SCENARIO_FILE_NODES)
    except safeyaml.YamlFileError as e:
        raise ScenarioError(str(e)) from None
    as_json = _json_text(data)
    if as_json is not None:  # compact it: see _json_text
        del data
        gc.collect()
        data = json.loads(as_json)
        del as_json
    return parse(data, f"scenario file {display_path(path)}", Path(path).parent)


def _json_text(data: Any) -> str | None:
    """``data`` as JSON text, or None if it holds anything JSON has not (a YAML date, a key
    that is not a string).

    The values PyYAML keeps lie between the garbage of its node tree, so the memory of a
    large parse stays with the process: at 64 GPUs x 128 processes, 55 MB of RSS. Read
    back from this text once every object of the parse is gone, the same values take the
    arenas the parse freed, and the rest goes back to the system."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                return None
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif not (v is None or type(v) in (str, int, float, bool)):
            return None
    return json.dumps(data)
