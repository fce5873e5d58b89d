"""Configuration: YAML into frozen dataclasses, validated with one-line errors.

Every key and its default is documented in ``deploy/gpuprobe.yaml``; a test keeps that file
and these dataclasses in step. A bad key, type or value raises :class:`ConfigError` whose
message names the file and the dotted key, which the CLI prints as a single line.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from gpuprobe.daemon.core import safeyaml
from gpuprobe.daemon.core.collectors import BUILTIN
from gpuprobe.daemon.core.probekinds import PROBE_KINDS
from gpuprobe.daemon.core.safeyaml import short

DEFAULT_PORT = 14787
# Loopback until the operator chooses to expose per-process details to the network
# (docs/security.md): the shipped Kubernetes manifests and deploy/gpuprobe.yaml say so.
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
LOG_LEVELS = ("debug", "info", "warning", "error")

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# No duration anywhere is longer than this: a larger one is a typo, and it keeps every
# time computed from a config value far from float and datetime limits.
MAX_DURATION = 30 * DAY
MAX_PATH = 4096

# XID codes whose counters exist at 0 from the start, so that the first occurrence is an
# increase Prometheus can see. NVIDIA's XID catalogue marks these as needing attention.
DEFAULT_XID_CODES = (48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120)


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the key."""


def _duration(minimum: float = 0.0, maximum: float = DAY, **extra: Any) -> dict[str, Any]:
    assert maximum <= MAX_DURATION
    return {"duration": True, "min": minimum, "max": maximum, **extra}


@dataclass(frozen=True)
class CollectorConfig:
    enabled: bool = True
    interval: float = field(default=5.0, metadata=_duration(0.05))
    # Deadline for one collection. A collection past it is reported stalled.
    timeout: float | None = field(default=None, metadata=_duration(0.01))

    def deadline(self) -> float:
        return self.timeout if self.timeout is not None else 0.8 * self.interval


@dataclass(frozen=True)
class NvidiaConfig:
    gpm: bool = True
    discovery_interval: float = field(default=60.0, metadata=_duration(1.0))
    retry_initial: float = field(default=1.0, metadata=_duration(0.01, HOUR))
    retry_max: float = field(default=300.0, metadata=_duration(0.01))
    xid_codes: tuple[int, ...] = field(default=DEFAULT_XID_CODES,
                                       metadata={"min": 0, "max": 65535, "max_items": 256})


@dataclass(frozen=True)
class AmdConfig:
    # How long the isolated amdsmi_init (a child process) may take before it is abandoned:
    # init has no timeout of its own and blocks on a wedged GPU.
    init_timeout: float = field(default=15.0, metadata=_duration(0.5, 300.0))
    discovery_interval: float = field(default=60.0, metadata=_duration(1.0))
    retry_initial: float = field(default=1.0, metadata=_duration(0.01, HOUR))
    retry_max: float = field(default=300.0, metadata=_duration(0.01))
    # ECC, RAS and bad-page counts change rarely; they are read at most this often.
    ras_interval: float = field(default=60.0, metadata=_duration(1.0))
    # The Python binding's structures must match libamd_smi's; a mismatch can corrupt
    # memory, so the backend refuses to run unless this is set.
    allow_version_mismatch: bool = False


@dataclass(frozen=True)
class PcieProbeConfig:
    every: float = field(default=900.0, metadata=_duration(1.0, MAX_DURATION))
    buffer_size: int = field(default=64 * 2**20, metadata={"size": True, "min": 2**20,
                                                            "max": 1024 * 2**20})
    copies: int = field(default=4, metadata={"min": 1, "max": 64})
    repetitions: int = field(default=5, metadata={"min": 1, "max": 50})


@dataclass(frozen=True)
class LaunchProbeConfig:
    every: float = field(default=300.0, metadata=_duration(1.0, MAX_DURATION))
    spin: float = field(default=20e-6, metadata=_duration(1e-6, 0.01))
    reach_bound: float = field(default=100e-6, metadata=_duration(1e-6, 1.0))
    calibrations: int = field(default=20, metadata={"min": 1, "max": 1000})


@dataclass(frozen=True)
class ProbesConfig:
    # Largest share of a GPU's wall time probes may use (context held), with the next run
    # pushed back accordingly; 0.001 is 0.1%.
    duty_cycle: float = field(default=0.001, metadata={"min": 1e-6, "max": 0.1})
    jitter: float = field(default=0.2, metadata={"min": 0.0, "max": 0.9})
    timeout: float = field(default=30.0, metadata=_duration(1.0, HOUR))
    backoff_max: float = field(default=3600.0, metadata=_duration(1.0, MAX_DURATION))
    skip_when_processes: bool = True
    max_utilization: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    min_thermal_margin: float = field(default=10.0, metadata={"min": 0.0, "max": 100.0})
    pcie: PcieProbeConfig = field(default_factory=PcieProbeConfig)
    launch: LaunchProbeConfig = field(default_factory=LaunchProbeConfig)


@dataclass(frozen=True)
class LeaksConfig:
    """The memory-leak detector; docs/leaks.md gives the reasoning behind each default."""

    window: float = field(default=1800.0, metadata=_duration(60.0))
    min_samples: int = field(default=12, metadata={"min": 6, "max": 10000})
    segments: int = field(default=6, metadata={"min": 3, "max": 60})
    min_rate: float = field(default=2**19 / 60, metadata={"rate": True, "min": 0.0,
                                                           "max": float(2**40)})
    min_significance: float = field(default=4.0, metadata={"min": 0.0, "max": 1000.0})
    min_duration: float = field(default=180.0, metadata=_duration(0.0))
    max_pause: float = field(default=360.0, metadata=_duration(0.0))
    warmup_grace: float = field(default=600.0, metadata=_duration(0.0))
    settle_grace: float = field(default=1800.0, metadata=_duration(0.0))
    history: float = field(default=8 * 3600.0, metadata=_duration(600.0, 24 * 3600.0))


@dataclass(frozen=True)
class ExporterConfig:
    process_metrics: bool = True
    # The per-link families (gpuprobe_link_*): an H100 has 18 NVLinks, 126 series per GPU,
    # more than all its other series; off by default, as in dcgm-exporter's default counters.
    # The per-device interconnect totals, and the alerts on them, stay either way.
    link_metrics: bool = False
    max_processes_per_device: int = field(default=32, metadata={"min": 0, "max": 4096})


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP server's limits (daemon/service/http.py explains each)."""

    max_connections: int = field(default=1024, metadata={"min": 8, "max": 65536})
    read_header_timeout: float = field(default=10.0, metadata=_duration(0.1, max=300.0))
    idle_timeout: float = field(default=300.0, metadata=_duration(1.0, max=3600.0))
    write_timeout: float = field(default=30.0, metadata=_duration(0.1, max=600.0))
    render_threads: int = field(default=2, metadata={"min": 1, "max": 16})
    # Serve from a process of its own, forked at start (daemon/service/serving.py), so that
    # a scrape never waits for the interpreter lock behind the polls; false serves from a
    # thread of the daemon's one process.
    separate_process: bool = True
    # How many nice steps the main process's threads (polls, encoding, probes) run below
    # the serving process, so a scrape is run first on busy CPUs (daemon/service/priority.py);
    # 0 leaves them equal. Only with separate_process.
    poll_nice: int = field(default=10, metadata={"min": 0, "max": 19})


@dataclass(frozen=True)
class HostConfig:
    proc_root: str = field(default="/proc", metadata={"path": True, "nonempty": True})
    # The kubelet's pod log directory, whose entries name each pod (probes/pods.py); empty
    # leaves pod and namespace off the process series.
    pod_logs_dir: str = field(default="/var/log/pods", metadata={"path": True})


@dataclass(frozen=True)
class SimulationConfig:
    enabled: bool = False
    # Path to a scenario YAML file; empty means the built-in default scenario.
    scenario: str = field(default="", metadata={"path": True})


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    # A Prometheus web config file (TLS, client certificates, basic auth); empty for plain
    # HTTP. docs/security.md.
    web_config_file: str = field(default="", metadata={"path": True})
    http: HttpConfig = field(default_factory=HttpConfig)
    collectors: Mapping[str, CollectorConfig] = field(default_factory=dict)
    nvidia: NvidiaConfig = field(default_factory=NvidiaConfig)
    amd: AmdConfig = field(default_factory=AmdConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    leaks: LeaksConfig = field(default_factory=LeaksConfig)
    host: HostConfig = field(default_factory=HostConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen, "listen")


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    """Split HOST:PORT (``[::1]:9`` for IPv6, ``:9`` for every interface)."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})", value) \
        if isinstance(value, str) and len(value) <= 300 else None
    if not m:
        raise ConfigError(
            f"{key}: expected HOST:PORT such as 0.0.0.0:{DEFAULT_PORT}, got {short(value)}")
    host = m.group(1) if m.group(1) is not None else (m.group(2) or "0.0.0.0")
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port must be between 1 and 65535, got {port}")
    return host, port


def _finite(value: int | float, key: str, what: str) -> float:
    """``value`` as a finite float, or a ConfigError (NaN, infinity, an integer too large
    for a float)."""
    number = safeyaml.as_float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected {what}, got {short(value)}")
    return number


_DURATION_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*(us|ms|s|m|h)?\s*$")
# Sub-second units divide, so that "20us" is exactly 20e-6.
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a string such as ``20us``, ``500ms``, ``5s``, ``2m``, ``1h``.
    Always finite."""
    what = "a duration such as 5s or 1m"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(value, key, what)
    if isinstance(value, str) and len(value) <= 100:
        m = _DURATION_RE.match(value)
        if m:
            unit = _UNIT_SECONDS[m.group(2)]
            return float(m.group(1)) / (1 / unit) if unit < 1 else float(m.group(1)) * unit
    raise ConfigError(f"{key}: expected {what}, got {short(value)}")


_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
               "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(value: Any, key: str) -> float:
    """Bytes from a number or a string such as ``512MiB`` or ``80GiB``. Always finite and
    not negative."""
    what = "a size such as 512MiB or 80GiB"
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return _finite(value, key, what)
    if isinstance(value, str) and len(value) <= 100:
        m = _SIZE_RE.match(value)
        if m:
            return float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ConfigError(f"{key}: expected {what}, got {short(value)}")


_RATE_RE = re.compile(r"^\s*(.+?)\s*/\s*(s|min|h)\s*$")
_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}


def parse_rate(value: Any, key: str) -> float:
    """Bytes per second from a number or a string such as ``20MiB/min``. Always finite."""
    what = "a rate such as 1MiB/min"
    if isinstance(value, str) and len(value) <= 100:
        m = _RATE_RE.match(value)
        if m:
            try:
                return parse_size(m.group(1), key) / _PER[m.group(2)]
            except ConfigError:
                pass  # said below, as a rate
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(value, key, what)
    raise ConfigError(f"{key}: expected {what}, got {short(value)}")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(value),
                                                                             type(value).__name__)


def _check_range(value: float, meta: Mapping[str, Any], key: str) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: must be at least {_num(lo)}, got {short(value)}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be at most {_num(hi)}, got {short(value)}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _convert(tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, meta)
    if meta.get("duration"):
        seconds = parse_duration(value, key)
        _check_range(seconds, meta, key)
        return seconds
    if meta.get("rate"):
        rate = parse_rate(value, key)
        _check_range(rate, meta, key)
        return rate
    if meta.get("size"):
        size = parse_size(value, key)
        _check_range(size, meta, key)
        return int(size)
    if isinstance(tp, type) and is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_type_name(value)} "
                              f"{short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_type_name(value)} "
                              f"{short(value)}")
        _check_range(value, meta, key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_type_name(value)} "
                              f"{short(value)}")
        number = _finite(value, key, "a finite number")
        _check_range(number, meta, key)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_type_name(value)} "
                              f"{short(value)}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {short(value)}")
        if meta.get("path"):
            if len(value) > MAX_PATH or "\0" in value:
                raise ConfigError(f"{key}: expected a file path, got {short(value)}")
            if meta.get("nonempty") and not value:
                raise ConfigError(f"{key}: must not be empty")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_type_name(value)} "
                              f"{short(value)}")
        most = meta.get("max_items")
        if most is not None and len(value) > most:
            raise ConfigError(f"{key}: at most {most} entries, got {len(value)}")
        return tuple(_convert(item_tp, v, f"{key}[{i}]", meta) for i, v in enumerate(value))
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in this module


# Keys that were replaced, by where they were: (section, old key) -> what to say.
REPLACED = {
    ("leaks", "min_snr"): "replaced by leaks.min_significance: the slope's significance in "
                          "standard errors; docs/leaks.md",
}


def _unknown_key(key: str, name: str, known: list[str]) -> ConfigError:
    name = safeyaml.cut(name, 30)  # the list of known keys makes the line long enough
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    if (key, name) in REPLACED:
        hint = f" ({REPLACED[key, name]})"
    where = f"{key}." if key else ""
    return ConfigError(f"{where}{name}: unknown key{hint}")


def _build(cls: type, data: Any, key: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'top level'}: expected a mapping, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for name in data:
        if name not in known:
            raise _unknown_key(key, str(name), known)
    kwargs = {}
    for f in fields(cls):
        if f.name in data and f.name != "collectors":
            sub = f"{key}.{f.name}" if key else f.name
            kwargs[f.name] = _convert(hints[f.name], data[f.name], sub, f.metadata)
    return cls(**kwargs)


def _build_collectors(data: Any) -> dict[str, CollectorConfig]:
    known = BUILTIN  # names and defaults only: parsing a config imports no backend
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"collectors: expected a mapping, got {_type_name(data)}")
    for name in data:
        if name not in known:
            raise _unknown_key("collectors", str(name), list(known))
    out = {}
    for name, info in known.items():
        default = CollectorConfig(enabled=info.enabled, interval=info.interval,
                                  timeout=info.timeout)
        given = data.get(name)
        if given is None or given is True:
            given = {}  # the defaults
        elif given is False:
            given = {"enabled": False}
        elif not isinstance(given, dict):
            raise ConfigError(f"collectors.{name}: expected a mapping, true or false, got "
                              f"{_type_name(given)} {short(given)}")
        merged = {f.name: getattr(default, f.name) for f in fields(CollectorConfig)}
        merged.update(given)
        if "interval" in given and "timeout" not in given:
            merged["timeout"] = None  # follow the new interval
        out[name] = _build(CollectorConfig, merged, f"collectors.{name}")
    return out


def from_mapping(data: Any) -> Config:
    """Validate a parsed YAML document. Raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level: expected a mapping of keys, got {_type_name(data)}")
    config = _build(Config, data, "")
    config = replace(config, collectors=_build_collectors(data.get("collectors")))
    config.listen_address()
    if config.nvidia.retry_max < config.nvidia.retry_initial:
        raise ConfigError("nvidia.retry_max: must not be shorter than nvidia.retry_initial")
    if config.amd.retry_max < config.amd.retry_initial:
        raise ConfigError("amd.retry_max: must not be shorter than amd.retry_initial")
    for name in (kind.collector for kind in PROBE_KINDS):
        cc = config.collectors.get(name)
        if cc is not None and cc.enabled and cc.deadline() <= config.probes.timeout:
            raise ConfigError(f"collectors.{name}.timeout: must be longer than probes.timeout "
                              f"({config.probes.timeout:g}s), got {cc.deadline():g}s")
    return config


def load(path: str | Path | None) -> Config:
    """Read and validate a config file; ``None`` gives the defaults. Raises ConfigError."""
    if path is None:
        return from_mapping({})
    try:
        data = safeyaml.load_file(path, label="config file")
    except safeyaml.YamlFileError as e:
        raise ConfigError(str(e)) from None
    try:
        return from_mapping(data)
    except ConfigError as e:
        raise ConfigError(f"config file {safeyaml.display_path(path)}: {e}") from None
