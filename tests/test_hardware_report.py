"""scripts/amd-hardware-report.sh: runs cleanly without ROCm, and asks the real binding
everything the AMD backend asks it (so that the two cannot drift)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuprobe.probes.sim import ManualClock, Simulation
from gpuprobe.probes.sim.scenario import parse

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "amd-hardware-report.sh"


def _python_part() -> str:
    text = SCRIPT.read_text()
    start = text.index("<<'PY'\n", text.index('step "binding calls"')) + len("<<'PY'\n")
    return text[start:text.index("\nPY\n", start)]


def _run(tmp_path: Path, rocm: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "ROCM_PATH": str(rocm),
           "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)


def test_without_rocm_it_says_so_and_writes_its_directory(tmp_path: Path) -> None:
    r = _run(tmp_path, tmp_path / "no-rocm")
    assert r.returncode == 0, r.stderr
    assert "no ROCm found" in r.stderr
    out = tmp_path / "out"
    assert "no ROCm found" in (out / "NO_ROCM.txt").read_text()
    assert "kernel:" in (out / "versions.txt").read_text()


def test_a_library_that_will_not_load_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    lib = tmp_path / "rocm" / "lib"
    lib.mkdir(parents=True)
    (lib / "libamd_smi.so").write_bytes(b"")  # present but not loadable
    r = _run(tmp_path, tmp_path / "rocm")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    calls = json.loads((out / "amdsmi-calls.json").read_text())
    assert "import" in calls  # the binding's failure, as valid JSON
    steps = (out / "steps.txt").read_text()
    assert "binding calls: exit 0" in steps and "kfd topology" in steps


def test_the_calls_cover_every_amdsmi_function_the_backend_uses() -> None:
    used = set()
    for path in (ROOT / "probes" / "amd").glob("*.py"):
        used |= set(re.findall(r"\b(amdsmi_(?:get|init|shut)\w*|AmdSmiEventReader)\b",
                               path.read_text()))
    assert len(used) > 25
    missing = {name for name in used if name not in _python_part()}
    assert not missing, f"add to scripts/amd-hardware-report.sh: {sorted(missing)}"


def test_the_python_part_runs_against_the_simulated_library(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The calls' argument shapes are right: on the simulated MI300 (partitioned) and
    Radeon every call gives a value or a recorded library error, never a crash."""
    scenario = parse({"seed": 1, "devices": [
        {"vendor": "amd", "partition": "DPX", "instances": [{"memory": "96GiB"}] * 2},
        {"vendor": "amd", "model": "AMD Radeon PRO W7900", "architecture": "rdna3",
         "memory": "48GiB"}]})
    sim = Simulation(scenario, ManualClock(start=60.0))
    sim.amdsmi.violation_latency = sim.amdsmi.throughput_latency = 0.0
    monkeypatch.setitem(sys.modules, "amdsmi", sim.amdsmi)
    monkeypatch.setattr(sys, "argv", ["-", str(tmp_path)])
    out = tmp_path / "calls.json"
    with out.open("w") as f:
        monkeypatch.setattr(sys, "stdout", f)
        exec(compile(_python_part(), "amd-hardware-report", "exec"), {"__name__": "__main__"})
    report = json.loads(out.read_text())
    assert report["amdsmi_get_processor_handles"]["count"] == 3
    first = report["handles"][0]
    assert first["amdsmi_get_gpu_memory_partition"] == {"value": "NPS1"}
    assert "value" in first["amdsmi_get_gpu_metrics_info (raw struct)"]
    # the simulation lacks the one call the backend does not make
    errors = {k: v for h in report["handles"] for k, v in h.items()
              if "error" in v and v["error"] != "AmdSmiLibraryException"
              and k != "amdsmi_get_gpu_memory_partition_config"}
    assert not errors
    sim.close()
