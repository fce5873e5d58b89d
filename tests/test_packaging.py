"""The package loads under one name only: from the repository root, `python -m daemon` used to
load every module a second time beside the installed gpuprobe.daemon (its collector registry
then came up empty: `collectors.nvidia: unknown key (known: )`)."""

from __future__ import annotations

import subprocess
import sys

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
