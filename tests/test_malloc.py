"""glibc malloc settings made by `gpuprobe run` (daemon/service/malloc.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from gpuprobe.daemon.service import malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _tune(env: dict[str, str]) -> str:
    code = "from gpuprobe.daemon.service import malloc; print(sorted(malloc.tune().items()))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**clean, **env}, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_glibc_gets_two_arenas_and_a_fixed_mmap_threshold():
    assert _tune({}) == "[('MALLOC_ARENA_MAX', 2), ('MALLOC_MMAP_THRESHOLD_', 131072)]"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_variable_the_user_set_wins():
    assert _tune({"MALLOC_ARENA_MAX": "4"}) == "[('MALLOC_MMAP_THRESHOLD_', 131072)]"
    assert _tune({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}) == "[]"


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert malloc.tune() == {}
