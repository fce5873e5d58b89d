"""The package loads under one name only: from the repository root, `python -m daemon` used to
load every module a second time beside the installed gpuprobe.daemon (its collector registry
then came up empty: `collectors.nvidia: unknown key (known: )`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT


def test_the_daemon_folder_refuses_to_load_under_a_second_name():
    p = subprocess.run([sys.executable, "-m", "daemon", "check-config",
                        str(ROOT / "deploy" / "gpuprobe.yaml")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert "loads only under that name" in p.stderr
    assert "unknown key" not in p.stderr


def test_the_installed_name_works_from_the_repository_root():
    p = subprocess.run([sys.executable, "-m", "gpuprobe.daemon", "check-config",
                        str(ROOT / "deploy" / "gpuprobe.yaml")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_parsing_a_config_imports_no_backend_and_a_disabled_one_is_never_imported(tmp_path):
    """Config parsing used to import every vendor backend (through the collector registry)."""
    config = tmp_path / "c.yaml"
    config.write_text("collectors: {amd: false, amd_processes: false, amd_slow: false, "
                      "amd_events: false, pcie_probe: false, launch_probe: false}\n")
    code = (
        "import sys\n"
        "from gpuprobe.daemon.core import config\n"
        f"cfg = config.load({str(config)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('gpuprobe.probes')))\n"
        "from gpuprobe.daemon.service.app import Daemon\n"
        "from gpuprobe.probes.sim import Simulation\n"
        "d = Daemon(cfg, Simulation.from_file(None))\n"
        "print(sorted(m for m in sys.modules if m.startswith('gpuprobe.probes.amd')))\n"
        "print(sorted(c.name for c in d.scheduler.collectors))\n"
        "d.stop()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    parsed, amd_after_start, running = p.stdout.strip().splitlines()
    assert parsed == "[]"
    assert "gpuprobe.probes.amd.telemetry" not in amd_after_start
    assert running == str(sorted(["nvidia", "nvidia_processes", "nvidia_events",
                                  "memory_leaks"]))


def test_every_package_folder_is_installed():
    """pyproject lists the packages by hand (daemon/ and probes/ are mapped under gpuprobe):
    a folder left out installs nothing with `pip install .`, while an editable install, which
    maps whole folders, still works, so only this test sees it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    folders = {"gpuprobe." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in ("daemon", "probes") for p in (ROOT / top).rglob("__init__.py")}
    assert folders == listed
