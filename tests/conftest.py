"""Shared fixtures: simulated GPUs on a hand-moved clock, daemons, promtool."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuprobe.daemon.core import config as config_mod
from gpuprobe.daemon.service.app import Daemon
from gpuprobe.probes.sim import ManualClock, Simulation
from gpuprobe.probes.sim.scenario import parse

ROOT = Path(__file__).resolve().parent.parent

# Three GPUs that between them take every path of the NVIDIA backend: a Hopper GPU with GPM,
# a second Hopper GPU, and an Ampere GPU split into two MIG instances.
SMALL_SCENARIO = {
    "name": "small",
    "seed": 1,
    "devices": [
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "architecture": "hopper",
         "memory": "80GiB", "reserved": "512MiB",
         "processes": [{"pid": 1001, "name": "trainer", "utilization": 0.5,
                        "container": "ab" * 32,
                        "memory": {"pattern": "constant", "size": "1GiB"}}]},
        {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "architecture": "hopper",
         "memory": "80GiB",
         "processes": [{"pid": 2001, "name": "infer", "utilization": 0.25,
                        "memory": {"pattern": "constant", "size": "2GiB"}}]},
        {"vendor": "nvidia", "model": "NVIDIA A100-SXM4-80GB", "architecture": "ampere",
         "memory": "80GiB", "pcie": {"max_generation": 4},
         "instances": [{"profile": "3g.40gb", "memory": "40GiB"},
                       {"profile": "3g.40gb", "memory": "40GiB"}],
         "processes": [{"pid": 3001, "name": "notebook", "instance": 1, "utilization": 0.3,
                        "memory": {"pattern": "constant", "size": "3GiB"}}]},
    ],
}

FAST = {
    "exporter": {"link_metrics": True},  # the per-link families are tested too (off by default)
    "nvidia": {"retry_initial": "10ms", "retry_max": "50ms", "discovery_interval": "1h"},
    "collectors": {"nvidia": {"interval": "1s", "timeout": "500ms"},
                   "nvidia_processes": {"interval": "1s", "timeout": "500ms"},
                   "nvidia_events": {"interval": "1s", "timeout": "200ms"},
                   # probes have tests of their own (test_probes.py)
                   "pcie_probe": {"enabled": False}, "launch_probe": {"enabled": False}},
}


def real_time_collectors(processes: str = "500ms") -> dict[str, dict[str, str]]:
    """The collectors' schedules for a daemon process run against the simulation in real
    time (tests/test_daemon_e2e.py, tests/test_e2e_prometheus.py): the collectors twice a
    second, the process collectors every ``processes``, amd_slow every 2 s, the leak
    detector four times a second."""
    return {"nvidia": {"interval": "500ms"}, "nvidia_processes": {"interval": processes},
            "nvidia_events": {"interval": "500ms"}, "memory_leaks": {"interval": "250ms"},
            "amd": {"interval": "500ms"}, "amd_processes": {"interval": processes},
            "amd_events": {"interval": "500ms"}, "amd_slow": {"interval": "2s"},
            "pcie_probe": {"interval": "500ms", "timeout": "45s"},
            "launch_probe": {"interval": "500ms", "timeout": "45s"}}


def make_daemon(scenario: dict | None = None, config: dict | None = None,
                clock: ManualClock | None = None) -> Daemon:
    # What earlier tests left is collected now and frozen out of later collections: the
    # tests' collector deadlines are 0.5 s, and a full collection over everything a long
    # test run holds took 0.3-1.4 s (a fault test failed in CI on such a pause).
    gc.collect()
    gc.freeze()
    clock = clock or ManualClock(start=60.0)
    sim = Simulation(parse(scenario or SMALL_SCENARIO), clock)
    return Daemon(config_mod.from_mapping({**FAST, **(config or {})}), sim)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = make_daemon()
    yield d
    d.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_tool(name: str) -> str | None:
    """A tool from PATH, or from the copy scripts/test.sh unpacks into .cache/."""
    found = shutil.which(name)
    if found:
        return found
    local = ROOT / ".cache" / "prometheus" / "usr" / "bin" / name
    return str(local) if local.exists() else None


def prometheus_tool(name: str) -> str:
    """A tool of Debian's prometheus package: skipped where it is missing, a failure where
    CI requires it (GPUPROBE_REQUIRE_PROMETHEUS)."""
    path = find_tool(name)
    if path is None:
        if os.environ.get("GPUPROBE_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{name} not found; scripts/test.sh installs Debian's prometheus")
        pytest.skip(f"{name} not installed (scripts/test.sh installs it)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    return prometheus_tool("prometheus")


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def gpuprobe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuprobe.daemon", *args]


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class RunningDaemon:
    """``gpuprobe run`` as a child process on a free loopback port."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            gpuprobe_cmd("run", "--listen", f"127.0.0.1:{self.port}", *args),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})})

    def get(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.proc.stdout.read()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False
        wait_for(ready, timeout)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> Any:
    """benchmarks/NAME.py as a module (they import their siblings, e.g. _harness, by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up while a class is built
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCHMARKS))
