"""The command line on nasty input: one line, exit status 2, no traceback."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import gpuprobe_cmd, write_yaml
from .test_cli import one_line_error
from .test_safeyaml import BILLION_LAUGHS


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(gpuprobe_cmd(*args), capture_output=True, text=True, timeout=60)


NASTY = {
    "lol.yaml": (BILLION_LAUGHS.encode(), "aliases are expanded"),
    "deep.yaml": (b"listen: " + b"[" * 10_000, "nest"),
    "latin1.yaml": ("listen: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    "digits.yaml": (b"collectors:\n  nvidia:\n    interval: " + b"1" * 400 + b"\n",
                    "collectors.nvidia.interval"),
    "inf.yaml": (b"probes:\n  pcie:\n    buffer_size: .inf\n", "probes.pcie.buffer_size"),
    "nan.yaml": (b"collectors:\n  nvidia:\n    interval: .nan\n", "collectors.nvidia.interval"),
    "zero.yaml": (b"collectors:\n  pcie_probe: 0\n", "collectors.pcie_probe"),
    "long.yaml": (b"log_level: " + b"v" * 100_000 + b"\n", "log_level"),
    "int.yaml": (b"exporter:\n  max_processes_per_device: 1" + b":30" * 5000 + b"\n",
                 "an integer of"),
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_check_config_on_nasty_files(tmp_path, name):
    content, fragment = NASTY[name]
    path = tmp_path / name
    path.write_bytes(content)
    p = run("check-config", str(path))
    one_line_error(p, 2, name, fragment)
    assert len(p.stderr.strip()) <= 200 + len(str(path))


def test_check_config_on_dev_zero():
    one_line_error(run("check-config", "/dev/zero"), 2, "/dev/zero", "larger than 1 MiB")


def test_false_disables_a_collector(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"collectors": {"pcie_probe": False}})
    p = run("check-config", str(path))
    assert p.returncode == 0, p.stderr
    enabled = p.stdout.split("collectors: ")[1]
    assert "pcie_probe" not in enabled and "launch_probe" in enabled


def test_check_config_on_a_nasty_scenario(tmp_path):
    scenario = write_yaml(tmp_path / "s.yaml", {"devices": [{"events": [
        {"at": 0, "kind": "xid", "code": 48, "count": 100_000_000, "spacing": "1ms"}]}]})
    path = write_yaml(tmp_path / "c.yaml", {"simulation": {"enabled": True,
                                                           "scenario": str(scenario)}})
    one_line_error(run("check-config", str(path)), 2, "s.yaml",
                   "devices[0].events[0].count: must be between 1 and 10000")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("devices:\n  - model: caf\xe9\n".encode("latin-1"))
    one_line_error(run("run", "--simulate", str(latin)), 2, "latin.yaml", "not UTF-8")


def test_empty_listen_is_an_error():
    one_line_error(run("run", "--simulate", "--listen", ""), 2, "--listen",
                   "expected HOST:PORT")
