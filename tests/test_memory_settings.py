"""Memory settings of a running daemon: glibc malloc (daemon/service/malloc.py), GC thresholds."""

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


def test_a_started_daemon_collects_young_objects_every_10000_allocations():
    import gc

    from gpuprobe.daemon.service.app import GC_THRESHOLDS

    from .conftest import make_daemon

    before = gc.get_threshold()
    d = make_daemon()
    try:
        d.start(serve=False)
        assert gc.get_threshold() == GC_THRESHOLDS == (10_000, 10, 10)
    finally:
        d.stop()
        gc.set_threshold(*before)
