"""Configuration values are finite and bounded; `false` disables a collector; error lines are
short; no bad file gets past the loader as anything but a ConfigError."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import pytest

from gpuprobe.daemon.core import config
from gpuprobe.daemon.core.config import CollectorConfig, Config, ConfigError

MAX_LINE = 200  # not counting the file's path (itself cut to 100 characters)


def _numeric(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    tp = args[0]
    if typing.get_origin(tp) is tuple:
        tp = typing.get_args(tp)[0]
    return tp in (int, float)


def numeric_keys() -> list[tuple[str, dict[str, Any]]]:
    """(dotted key, field metadata) of every number the config reads, collectors included."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif f.name == "collectors":
                for name in ("nvidia", "pcie_probe", "memory_leaks"):
                    walk(CollectorConfig, f"collectors.{name}.")
            elif _numeric(tp):
                out.append((prefix + f.name, dict(f.metadata)))

    walk(Config, "")
    return out


def nested(key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    here = data
    parts = key.split(".")
    for p in parts[:-1]:
        here = here.setdefault(p, {})
    here[parts[-1]] = value
    return data


def short_single_line(e: BaseException, path: Any = None) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    assert len(msg.replace(str(path), "") if path else msg) <= MAX_LINE, msg
    return msg


KEYS = numeric_keys()
LIST_KEYS = {"nvidia.xid_codes"}


def test_the_walk_finds_the_numbers():
    names = {k for k, _ in KEYS}
    assert {"collectors.nvidia.interval", "probes.pcie.buffer_size", "leaks.min_rate",
            "nvidia.xid_codes", "probes.duty_cycle"} <= names
    assert len(names) > 30


@pytest.mark.parametrize("key, meta", KEYS, ids=[k for k, _ in KEYS])
def test_every_number_has_a_lower_and_an_upper_bound(key, meta):
    assert meta.get("min") is not None and meta.get("max") is not None, key
    assert math.isfinite(meta["min"]) and math.isfinite(meta["max"])
    if meta.get("duration"):
        assert meta["max"] <= config.MAX_DURATION


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", [k for k, _ in KEYS])
def test_nan_and_infinity_are_refused_everywhere(key, bad):
    value = [bad] if key in LIST_KEYS else bad
    with pytest.raises(ConfigError) as e:
        config.from_mapping(nested(key, value))
    assert short_single_line(e.value).startswith(key)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1" * 400, "9" * 400 + ".5",
                                  '"' + "9" * 400 + 's"', '"1.' + "5" * 40 + 'h"'])
def test_huge_and_non_finite_values_in_a_file(tmp_path, text):
    """Through the YAML loader as a user writes them: .nan and .inf, a 400-digit integer
    (OverflowError before), a 400-digit string duration (an infinite float before)."""
    for key in ("collectors.nvidia.interval", "probes.pcie.buffer_size", "leaks.min_rate",
                "probes.duty_cycle", "exporter.max_processes_per_device"):
        section, _, leaf = key.rpartition(".")
        lines, indent = [], ""
        for part in section.split("."):
            lines.append(f"{indent}{part}:")
            indent += "  "
        lines.append(f"{indent}{leaf}: {text}")
        path = tmp_path / "c.yaml"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError) as e:
            config.load(path)
        msg = short_single_line(e.value, path)
        assert f"c.yaml: {key}: " in msg


def test_nan_interval_no_longer_accepted():
    """The defect as filed: `.nan` made the collector run once and never again."""
    with pytest.raises(ConfigError, match=r"collectors.nvidia.interval: expected a duration"):
        config.from_mapping({"collectors": {"nvidia": {"interval": math.nan}}})


@pytest.mark.parametrize("key, value, message", [
    ("collectors.nvidia.interval", "2d", "expected a duration"),
    ("collectors.nvidia.interval", 86401, "must be at most 86400"),
    ("collectors.nvidia.timeout", "25h", "must be at most 86400"),
    ("probes.backoff_max", 31 * 86400, "must be at most 2.592e+06"),
    ("probes.timeout", "2h", "must be at most 3600"),
    ("probes.pcie.buffer_size", "2GiB", "must be at most 1073741824"),
    ("leaks.min_rate", "2TiB/s", "must be at most"),
    ("leaks.min_significance", 1e6, "must be at most 1000"),
    ("leaks.window", "2d", "expected a duration"),
    ("nvidia.xid_codes", [2**40], "nvidia.xid_codes[0]: must be at most 65535"),
    ("nvidia.xid_codes", list(range(300)), "nvidia.xid_codes: at most 256 entries"),
    ("host.proc_root", "", "host.proc_root: must not be empty"),
    ("host.proc_root", "/pr\0c", "host.proc_root: expected a file path"),
    ("simulation.scenario", "x" * 5000, "simulation.scenario: expected a file path"),
])
def test_bounds(key, value, message):
    with pytest.raises(ConfigError) as e:
        config.from_mapping(nested(key, value))
    msg = short_single_line(e.value)
    assert msg.startswith(key) and message in msg, msg


def test_false_disables_a_collector_and_true_keeps_its_defaults():
    c = config.from_mapping({"collectors": {"pcie_probe": False, "nvidia": True,
                                            "amd": None}})
    assert c.collectors["pcie_probe"].enabled is False
    defaults = config.from_mapping({})
    assert c.collectors["nvidia"] == defaults.collectors["nvidia"]
    assert c.collectors["amd"] == defaults.collectors["amd"]
    # disabled, it no longer has to outlast probes.timeout
    slow = {"probes": {"timeout": "10m"}}
    with pytest.raises(ConfigError, match=r"collectors\.pcie_probe\.timeout: must be longer"):
        config.from_mapping({**slow, "collectors": {"launch_probe": False}})
    c = config.from_mapping({**slow, "collectors": {"launch_probe": False,
                                                    "pcie_probe": False}})
    assert not c.collectors["launch_probe"].enabled


@pytest.mark.parametrize("value, shown", [(0, "an integer 0"), (1, "an integer 1"),
                                          ("off", "a string 'off'"), ([], "a list []"),
                                          (0.0, "a number 0.0")])
def test_anything_else_for_a_collector_is_an_error(value, shown):
    with pytest.raises(ConfigError) as e:
        config.from_mapping({"collectors": {"pcie_probe": value}})
    assert short_single_line(e.value) == (
        f"collectors.pcie_probe: expected a mapping, true or false, got {shown}")


@pytest.mark.parametrize("data", [
    {"listen": "x" * 100_000},
    {"log_level": "v" * 100_000},
    {"collectors": {"nvidia": {"interval": "f" * 100_000}}},
    {"collectors": {"nvidia": {"enabled": ["x" * 1000] * 1000}}},
    {"collectors": {"n" * 100_000: {}}},
    {"k" * 100_000: 1},
    {"exporter": {"max_processes_per_device": 10**400}},
    {"probes": {"pcie": {"buffer_size": "9" * 100_000}}},
    {"leaks": {"min_rate": "9" * 100_000 + "MiB/min"}},
    {"nvidia": {"xid_codes": ["x" * 100_000]}},
    {"host": {"proc_root": ["/proc"] * 100_000}},
])
def test_a_huge_bad_value_gives_a_short_line(data):
    with pytest.raises(ConfigError) as e:
        config.from_mapping(data)
    short_single_line(e.value)


def test_a_long_path_is_cut_in_the_error(tmp_path):
    deep = tmp_path / ("d" * 200) / ("e" * 200) / "config.yaml"
    with pytest.raises(ConfigError) as e:
        config.load(deep)
    msg = short_single_line(e.value)
    assert msg.startswith("config file ...") and "config.yaml: No such file" in msg
