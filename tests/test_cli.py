"""The command line as a user runs it: exit codes, one-line errors, snapshot output."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from .conftest import ROOT, gpuprobe_cmd, write_yaml


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(gpuprobe_cmd(*args), capture_output=True, text=True, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("gpuprobe: error: ")
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0]


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("gpuprobe ")


def test_check_config_accepts_the_shipped_file():
    p = run("check-config", str(ROOT / "deploy" / "gpuprobe.yaml"))
    assert p.returncode == 0, p.stderr
    assert "OK" in p.stdout and "nvidia" in p.stdout


def test_check_config_rejects_with_one_line(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"collectors": {"nvidia": {"interval": -5}}})
    one_line_error(run("check-config", str(bad)), 2, "bad.yaml",
                   "collectors.nvidia.interval", "at least")
    one_line_error(run("check-config", str(tmp_path / "nope.yaml")), 2, "nope.yaml")


def test_run_rejects_bad_input_before_starting(tmp_path):
    one_line_error(run("run", "--listen", "nonsense"), 2, "--listen")
    one_line_error(run("run", "--simulate", str(tmp_path / "missing.yaml")), 2,
                   "missing.yaml")
    scenario = write_yaml(tmp_path / "s.yaml", {"devices": [{"vendor": "nvidia", "memroy": 1}]})
    one_line_error(run("run", "--simulate", str(scenario)), 2, "devices[0].memroy",
                   "unknown key", "did you mean 'memory'")


def test_run_on_a_port_in_use_fails_with_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(run("run", "--simulate", "--listen", f"127.0.0.1:{port}"), 1,
                       "cannot listen", str(port))


def test_snapshot_table_of_simulated_gpus():
    p = run("snapshot", "--simulate")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "MEMORY USED/TOTAL" in out and "NVIDIA H100 80GB HBM3" in out
    assert "4/1" in out  # a MIG instance
    assert "train_leaky" in out  # the process table
    assert "nvidia: up" in out
    assert "amd: up" in out and "llm_train" in out


def test_snapshot_json():
    p = run("snapshot", "--simulate", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    # 6 NVIDIA GPUs and 2 MIG instances, 2 AMD GPUs and the MI300X's 2 partitions
    assert len(data["devices"]) == 12
    assert sum(d["identity"]["vendor"] == "amd" for d in data["devices"]) == 4
    gpu0 = next(d for d in data["devices"] if d["identity"]["index"] == "0"
                and d["identity"]["vendor"] == "nvidia")
    assert gpu0["memory"]["total_bytes"] == 80 * 2**30
    assert gpu0["activity"]["sm_active"] is not None  # two samples were taken for GPM
    assert {p["pid"] for p in data["processes"]} >= {41001, 41002, 41003}
    assert data["collectors"]["nvidia"]["up"] is True
    assert data["collectors"]["amd"]["up"] is True
    assert {p["pid"] for p in data["processes"]} >= {46001, 46002, 47001}


@pytest.mark.skipif((ROOT / ".no-real-nvml").exists(), reason="marker file")
def test_snapshot_without_a_gpu_says_so():
    """On a host without the NVIDIA driver (as in CI), the backend reports itself unavailable
    and the command still succeeds. On a GPU host it shows the GPUs."""
    p = run("snapshot")
    assert p.returncode == 0, p.stderr
    assert "nvidia: unavailable: libnvidia-ml.so.1 not found" in p.stdout or \
        "nvidia: up" in p.stdout
    # The AMD side the same way: the published amdsmi binding fails to load without ROCm.
    assert "amd: unavailable: libamd_smi.so not found" in p.stdout or \
        "amd: unavailable: the amdsmi Python package is not installed" in p.stdout or \
        "amd: up" in p.stdout


def _first_column(table: str) -> list[str]:
    return [line.split()[0] for line in table.strip().splitlines()[1:]]


def test_every_gpu_has_one_name_and_one_order_on_a_mixed_host():
    """The built-in scenario has NVIDIA 0-5 and AMD 0-1: snapshot and probe show each GPU by
    vendor and index, none twice, in the same order (vendor, index, instances/partitions
    right after their parent)."""
    snap = run("snapshot", "--simulate")
    assert snap.returncode == 0, snap.stderr
    gpus = _first_column(snap.stdout.split("\n\n")[0])
    assert len(gpus) == len(set(gpus)) == 12
    assert gpus[:5] == ["amd:0", "amd:0/0", "amd:0/1", "amd:1", "nvidia:0"]
    assert gpus[-3:] == ["nvidia:4/1", "nvidia:4/2", "nvidia:5"]
    assert "partition DPX" in snap.stdout  # an AMD partition says so; "MIG" is NVIDIA's word
    probe = run("probe", "pcie", "--simulate")
    rows = _first_column(probe.stdout)
    assert rows == [g for g in gpus if "/" not in g]  # the physical GPUs, in the same order
    assert "skipped: partitioned" in probe.stdout and "skipped: MIG" in probe.stdout


def test_probe_gpu_selects_by_name_or_uuid_and_refuses_an_ambiguous_index():
    one_line_error(run("probe", "pcie", "--simulate", "--gpu", "0"), 2,
                   "--gpu 0", "more than one GPU", "amd:0, nvidia:0")
    p = run("probe", "pcie", "--simulate", "--gpu", "nvidia:5")
    assert p.returncode == 0, p.stderr
    assert _first_column(p.stdout) == ["nvidia:5"]
    p = run("probe", "pcie", "--simulate", "--gpu", "amd:1")
    assert _first_column(p.stdout) == ["amd:1"]
    data = json.loads(run("snapshot", "--simulate", "--json").stdout)
    uuid = next(d["identity"]["uuid"] for d in data["devices"]
                if d["identity"]["vendor"] == "nvidia" and d["identity"]["index"] == "5")
    p = run("probe", "pcie", "--simulate", "--gpu", uuid)
    assert p.returncode == 0 and _first_column(p.stdout) == ["nvidia:5"], p.stderr
    p = run("probe", "pcie", "--simulate", "--gpu", "5")  # only NVIDIA has a 5
    assert p.returncode == 0 and _first_column(p.stdout) == ["nvidia:5"], p.stderr
    one_line_error(run("probe", "pcie", "--simulate", "--gpu", "amd:7"), 2, "no such GPU",
                   "amd:0, amd:1, nvidia:0")
